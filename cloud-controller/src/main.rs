//! `cloud-controller`: see [`cloud_controller::cli`].

fn main() -> std::process::ExitCode {
    cloud_controller::cli::main()
}
