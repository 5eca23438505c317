//! The `edge-node` program, built inside this package so that process tests
//! always run the current code (see the crate docs).

fn main() -> std::process::ExitCode {
    edge_node::cli::main()
}
