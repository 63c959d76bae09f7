fn main() {
    println!("ozbus {}", env!("CARGO_PKG_VERSION"));
}
