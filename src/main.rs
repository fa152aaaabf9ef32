fn main() {
    println!("wick");
}
