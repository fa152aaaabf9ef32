fn main() -> std::process::ExitCode {
    wick::cli::main()
}
