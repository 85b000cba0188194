//! `meshota-sim`: the fleet simulator. Not built yet (issue 7); this
//! binary says so instead of pretending.

fn main() -> std::process::ExitCode {
    eprintln!(
        "meshota-sim: the fleet simulator is not implemented yet (tracked as issue 7).\n\
         Today you can create keys and bundles with `meshota keys init` and `meshota bundle create`."
    );
    std::process::ExitCode::from(2)
}
