//! Java: Debian's default JDK. The file is named after the public class, as `javac`
//! requires; both JVMs use the serial collector and the first JIT tier (quick starts).

use super::{MountSpec, Recipe, Source, SourceOptions, Spec};

pub const SPEC: Spec = Spec {
    name: "java",
    doc: "`javac`, cached, then `java` (the public class's name is the file's)",
    packages: &["default-jdk-headless"],
    // The JDK's configuration (security policy, `jvm.cfg`) lives in /etc.
    mounts: &[MountSpec::same("/etc/java-*")],
    version: &["javac", "-J-XX:+UseSerialGC", "-version"],
    libraries: Some(&[
        "/bin/sh",
        "-c",
        "java -XX:+UseSerialGC --list-modules | tr @ ' '",
    ]),
    file: "Main.java",
    source: Some(source),
    recipe: Recipe::Compile {
        build: &[
            "javac",
            "-J-XX:+UseSerialGC",
            "-J-XX:TieredStopAtLevel=1",
            "-d",
            "{out}",
            "{file}",
        ],
        run: &[
            "java",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-cp",
            "{build}",
            "{stem}",
        ],
        toolchain_cache: None,
    },
    ..Spec::DEFAULT
};

fn source(code: &str, _: &SourceOptions) -> Source {
    Source {
        file: format!("{}.java", class_name(code)),
        text: code.into(),
        vars: Vec::new(),
    }
}

/// The public class's name (the file must be named after it), else `Main`.
fn class_name(code: &str) -> String {
    let mut words = code.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w == "public" {
            let mut next = words.clone();
            while let Some(m) = next.next() {
                match m {
                    "final" | "abstract" | "static" | "strictfp" => continue,
                    "class" | "record" | "enum" | "interface" => {
                        if let Some(name) = next.next() {
                            let ident: String = name
                                .chars()
                                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
                                .collect();
                            if !ident.is_empty() {
                                return ident;
                            }
                        }
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
    "Main".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_found() {
        assert_eq!(class_name("public class Hello { }"), "Hello");
        assert_eq!(class_name("public final class Greeter{"), "Greeter");
        assert_eq!(class_name("class X {}"), "Main");
    }
}
