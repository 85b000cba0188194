//! `meshota`, the operator CLI (subcommands land with the bundle tool).
fn main() {}
