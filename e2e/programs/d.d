import std.conv : to;
import std.file : readText, write;
import std.format : format;
import std.stdio : writeln;
import std.string : strip;

void main() {
    auto n = readText("e2e-input.txt").strip.to!int;
    auto line = format("e2e d %d", n * 2);
    write("e2e-d.txt", line ~ "\n");
    writeln(line);
}
