fn main() {
    println!("cloud-controller: not yet implemented");
}
