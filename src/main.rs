fn main() {
    std::process::exit(implicit::cli::main());
}
