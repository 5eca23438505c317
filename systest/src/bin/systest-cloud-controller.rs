//! The `cloud-controller` program, built inside this package so that process
//! tests always run the current code (see the crate docs).

fn main() -> std::process::ExitCode {
    cloud_controller::cli::main()
}
