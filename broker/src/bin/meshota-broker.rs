//! `meshota-broker`.
fn main() {}
