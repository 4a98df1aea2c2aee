// Reads a zip from standard input with java.util.zip.ZipInputStream (local headers only,
// as when streaming) and prints, per entry, "name<TAB>size<TAB>crc32-hex" in UTF-8.
// ZipInputStream itself checks each entry's CRC and sizes against the header or descriptor.
import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.zip.CRC32;
import java.util.zip.ZipEntry;
import java.util.zip.ZipInputStream;

public class ZipInputStreamCheck {
    public static void main(String[] args) throws Exception {
        PrintStream out = new PrintStream(
            new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16),
            false, StandardCharsets.UTF_8);
        byte[] buffer = new byte[1 << 16];
        BufferedInputStream in = new BufferedInputStream(System.in, 1 << 16);
        try (ZipInputStream zip = new ZipInputStream(in, StandardCharsets.UTF_8)) {
            ZipEntry entry;
            while ((entry = zip.getNextEntry()) != null) {
                CRC32 crc = new CRC32();
                long size = 0;
                int n;
                while ((n = zip.read(buffer)) > 0) {
                    crc.update(buffer, 0, n);
                    size += n;
                }
                out.printf("%s\t%d\t%08x%n", entry.getName(), size, crc.getValue());
            }
            // ZipInputStream stops at the central directory; drain the rest so the writer
            // of the pipe does not die of SIGPIPE.
            while (in.read(buffer) > 0) {
            }
        }
        out.flush();
    }
}
