use std::fs;

fn main() {
    let n: i64 = fs::read_to_string("e2e-input.txt")
        .expect("e2e-input.txt is readable")
        .trim()
        .parse()
        .expect("e2e-input.txt holds a number");
    let line = format!("e2e rust {}", n * 2);
    fs::write("e2e-rust.txt", format!("{line}\n")).expect("e2e-rust.txt is writable");
    println!("{line}");
}
