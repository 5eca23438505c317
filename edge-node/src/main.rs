//! `edge-node`: see [`edge_node::cli`].

fn main() -> std::process::ExitCode {
    edge_node::cli::main()
}
