fn main() -> std::process::ExitCode {
    deskhand::cli::main()
}
