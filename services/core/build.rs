//! Rebuilds this crate when a migration is added or changed: `sqlx::migrate!`
//! embeds the migrations directory at compile time (`connections::MIGRATOR`).

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
