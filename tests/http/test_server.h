// TestServer: an in-process loopback HTTP/1.1 server with Range support and
// per-path fault injection, for the http test tier.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "shelbyfs/http_client.h"

namespace shelbyfs::test {

/// What the server does wrong for a path.
enum class Fault {
    None,
    Status,             ///< answer `status` (e.g. 503, 429) with a small body
    ShortBody,          ///< send headers with the full Content-Length, half the body, then close;
                        ///< PUT: read half the request body, then close without answering
    Stall,              ///< send headers, then nothing until the client hangs up;
                        ///< PUT: read half the request body, then stop reading and never answer
    IgnoreRange,        ///< answer 200 with the whole object, whatever the Range
    WrongContentRange,  ///< answer 206 with a Content-Range (and bytes) shifted by one
    ExtraByte,          ///< answer 206 with the right Content-Range but one byte too many
};

/// What a GET of a collection ("/dir/") with no object stored at that path answers.
enum class Listing {
    None,       ///< 404, like any missing object
    NginxJson,  ///< nginx `autoindex_format json`: [{"name":..,"type":"file"|"directory",..}]
    Html,       ///< an HTML index with relative, percent-encoded links (and the usual noise)
};

/// Serves registered in-memory objects on 127.0.0.1 at a kernel-chosen port.
/// GET: `Range: bytes=a-b` or `bytes=a-` gives 206 with Content-Range and
/// an exact Content-Length, no Range gives 200, a start at or past the end
/// gives 416, unknown paths give 404. PUT (Content-Length bodies only, else
/// 411) stores the body at the path and answers 201. HEAD answers 200 with the
/// stored object's Content-Length, or 404. Objects are keyed by the raw request
/// path, as sent (percent-escapes are not decoded). With a Listing set, a GET
/// of a path ending in '/' that holds no object lists the objects under it:
/// direct children as files, deeper ones as their first segment's directory,
/// names percent-decoded; none under it gives 404. Faults apply to every method
/// (Status answers without a body for HEAD, after reading the body for PUT).
/// Other methods give 405. Connections are kept alive.
///
/// Thread-safe: objects and faults may be changed and counters read from any
/// thread while requests are served. One accept thread plus one thread per
/// connection, all stopped and joined in the destructor (which shuts down
/// every socket first, so stalled connections end too).
class TestServer {
public:
    TestServer();
    ~TestServer();
    TestServer(const TestServer&) = delete;
    TestServer& operator=(const TestServer&) = delete;

    std::uint16_t port() const { return port_; }
    /// "http://127.0.0.1:<port>" + path (path starts with '/').
    std::string url(const std::string& path) const;

    /// Serve `body` at `path` (replacing any previous object there).
    void put(const std::string& path, std::string body);
    /// Misbehave for the next `count` requests of `path` (-1: forever).
    /// `status` is used by Fault::Status only.
    void set_fault(const std::string& path, Fault fault, int count = -1, int status = 503);
    /// How GETs of collections are answered (default Listing::None).
    void set_listing(Listing listing);

    /// Request body bytes read for `path` over all PUTs, cut-off ones included.
    std::uint64_t body_bytes(const std::string& path) const;
    /// Paths of every stored object, sorted.
    std::vector<std::string> paths() const;

    /// Requests received for `path` (faulty ones included).
    int requests(const std::string& path) const;
    /// The Range header of the last request for `path` ("" if none).
    std::string last_range(const std::string& path) const;
    /// The request line and headers of the last request for `path` ("" if none).
    std::string last_request(const std::string& path) const;
    /// The object stored at `path` (by put() or an HTTP PUT), if any.
    std::optional<std::string> object(const std::string& path) const;
    /// TCP connections accepted so far.
    int connections() const { return connections_.load(); }

private:
    struct FaultState {
        Fault fault = Fault::None;
        int remaining = 0;  // -1 = forever
        int status = 503;
    };
    struct Connection {
        int fd = -1;
        std::thread thread;
    };

    void accept_loop();
    void serve(int fd);
    // Handles one request; `buffer` holds the bytes received after its
    // headers, and a PUT consumes its body from it (reading more from `fd`).
    // Returns false when the connection must close.
    bool handle(int fd, const std::string& request, std::string& buffer);
    bool handle_put(int fd, const std::string& path, std::optional<std::uint64_t> content_length,
                    const FaultState& fault, std::string& buffer);
    // The generated listing of collection `path`, or nullopt if nothing is under it.
    std::optional<std::string> listing_locked(const std::string& path) const;
    void count_body_bytes(const std::string& path, std::size_t n);

    int listen_fd_ = -1;
    std::uint16_t port_ = 0;
    std::atomic<bool> stopping_{false};
    std::atomic<int> connections_{0};

    mutable std::mutex mutex_;  // guards everything below; never held across socket I/O
    std::map<std::string, std::string> objects_;
    std::map<std::string, FaultState> faults_;
    std::map<std::string, int> requests_;
    std::map<std::string, std::string> last_range_;
    std::map<std::string, std::string> last_request_;
    std::map<std::string, std::uint64_t> body_bytes_;
    Listing listing_ = Listing::None;
    std::vector<std::unique_ptr<Connection>> conns_;

    std::thread accept_thread_;
};

/// A fresh directory under $TMPDIR (or /tmp), removed with its contents by the destructor.
class TempDir {
public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }
    /// path() + "/" + name.
    std::string file(const std::string& name) const { return path_ + "/" + name; }
    /// Writes `data` to file(name), replacing it; returns its path. Aborts on failure.
    std::string write(const std::string& name, const std::string& data) const;

private:
    std::string path_;
};

/// A port on 127.0.0.1 with nothing listening (bound, then closed).
std::uint16_t unused_port();

/// Number of open file descriptors of this process, for leak checks.
int open_fd_count();

/// Deterministic, position-dependent bytes, so a shifted slice never matches.
inline std::string pattern(std::size_t size, unsigned seed = 7) {
    std::string s(size, '\0');
    for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>((i * 131 + i / 251 + seed) & 0xff);
    return s;
}

/// Client options that keep failing tests quick.
inline HttpOptions fast_options(int max_retries = 3) {
    HttpOptions o;
    o.connect_timeout = std::chrono::milliseconds(2000);
    o.stall_timeout = std::chrono::milliseconds(2000);
    o.max_retries = max_retries;
    o.backoff_initial = std::chrono::milliseconds(10);
    o.backoff_max = std::chrono::milliseconds(40);
    return o;
}

}  // namespace shelbyfs::test
