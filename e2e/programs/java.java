import java.nio.file.Files;
import java.nio.file.Path;

public class Main {
    public static void main(String[] args) throws Exception {
        int n = Integer.parseInt(Files.readString(Path.of("e2e-input.txt")).trim());
        String line = "e2e java " + (n * 2);
        Files.writeString(Path.of("e2e-java.txt"), line + "\n");
        System.out.println(line);
    }
}
