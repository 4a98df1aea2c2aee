// Reads a zip with java.util.zip.ZipFile (central directory) and prints, per entry,
// "name<TAB>size<TAB>crc32-hex" of the bytes actually read, in UTF-8.
// Fails (exit 1) when the CRC of the data differs from the one in the directory.
import java.io.BufferedOutputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.Enumeration;
import java.util.zip.CRC32;
import java.util.zip.ZipEntry;
import java.util.zip.ZipFile;

public class ZipFileCheck {
    public static void main(String[] args) throws Exception {
        PrintStream out = new PrintStream(
            new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16),
            false, StandardCharsets.UTF_8);
        byte[] buffer = new byte[1 << 16];
        try (ZipFile zip = new ZipFile(args[0], StandardCharsets.UTF_8)) {
            Enumeration<? extends ZipEntry> entries = zip.entries();
            while (entries.hasMoreElements()) {
                ZipEntry entry = entries.nextElement();
                CRC32 crc = new CRC32();
                long size = 0;
                try (InputStream in = zip.getInputStream(entry)) {
                    int n;
                    while ((n = in.read(buffer)) > 0) {
                        crc.update(buffer, 0, n);
                        size += n;
                    }
                }
                if (crc.getValue() != entry.getCrc()) {
                    System.err.println("CRC mismatch in " + entry.getName());
                    System.exit(1);
                }
                out.printf("%s\t%d\t%08x%n", entry.getName(), size, crc.getValue());
            }
        }
        out.flush();
    }
}
