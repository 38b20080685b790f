fn main() {
    std::process::exit(guard::cli::main_with_args(std::env::args_os().collect()));
}
