//! The `datastore` command: parse arguments, run, exit with the code.

use clap::Parser;

fn main() {
    let cli = datastore::cli::Cli::parse();
    std::process::exit(datastore::cli::run(cli));
}
