// Local-file range reads and the URL/path router.
#include "shelbyfs/blob_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace shelbyfs {

namespace {

std::future<Result<std::string>> ready(Result<std::string> r) {
    std::promise<Result<std::string>> p;
    p.set_value(std::move(r));
    return p.get_future();
}

std::string errno_text(int err) { return std::strerror(err); }

}  // namespace

std::future<Result<std::string>> FileReader::read_range(const std::string& location, std::uint64_t offset,
                                                        std::uint64_t length) {
    std::string data(length, '\0');  // allocate before open: a throw must not leak the fd
    int fd = ::open(location.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ready(make_error(Errc::Io, location + ": cannot open: " + errno_text(errno)));
    std::uint64_t done = 0;
    while (done < length) {
        ssize_t n = ::pread(fd, data.data() + done, length - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int err = errno;
            ::close(fd);
            std::string why = n == 0 ? "file is shorter than expected" : errno_text(err);
            return ready(make_error(Errc::Io, location + ": read of bytes " + std::to_string(offset) + "-" +
                                                  std::to_string(offset + length - 1) + " failed: " + why));
        }
        done += static_cast<std::uint64_t>(n);
    }
    ::close(fd);
    return ready(std::move(data));
}

Result<std::string> read_local_file(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return make_error(Errc::NotFound, path + ": " + errno_text(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return make_error(Errc::InvalidArgument, path + ": not a regular file");
    }
    std::string data;
    char buf[65536];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int err = errno;
            ::close(fd);
            return make_error(Errc::Io, path + ": read failed: " + errno_text(err));
        }
        if (n == 0) break;
        try {
            data.append(buf, static_cast<std::size_t>(n));
        } catch (...) {
            ::close(fd);
            throw;
        }
    }
    ::close(fd);
    return data;
}

}  // namespace shelbyfs
