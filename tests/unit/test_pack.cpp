// Tests for `pack` and ShardWriter: real trees in temp dirs, bytes checked against the shards.
#include <doctest/doctest.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "shelbyfs/archive.h"
#include "shelbyfs/hash.h"
#include "shelbyfs/manifest.h"
#include "shelbyfs/pack.h"

using namespace shelbyfs;
namespace fs = std::filesystem;

namespace {

int open_fd_count() {
    int count = 0;
    for ([[maybe_unused]] const auto& entry : fs::directory_iterator("/proc/self/fd")) ++count;
    return count;
}

// A fresh directory under /tmp, removed with everything in it at the end.
class TempDir {
public:
    TempDir() {
        char pattern[] = "/tmp/shelbyfs-pack-XXXXXX";
        REQUIRE(::mkdtemp(pattern) != nullptr);
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string operator/(std::string_view name) const { return path_ + "/" + std::string(name); }
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

// Checks the test leaked no file descriptors (open shards, directories, sources).
class FdLeakCheck {
public:
    FdLeakCheck() : before_(open_fd_count()) {}
    ~FdLeakCheck() { CHECK(open_fd_count() == before_); }
    FdLeakCheck(const FdLeakCheck&) = delete;
    FdLeakCheck& operator=(const FdLeakCheck&) = delete;

private:
    int before_;
};

// Sends fd 2 to a file while alive, so warnings and progress lines can be checked.
class StderrCapture {
public:
    StderrCapture() {
        std::fflush(stderr);
        char pattern[] = "/tmp/shelbyfs-pack-stderr-XXXXXX";
        int fd = ::mkstemp(pattern);
        REQUIRE(fd >= 0);
        path_ = pattern;
        saved_ = ::dup(STDERR_FILENO);
        ::dup2(fd, STDERR_FILENO);
        ::close(fd);
    }
    ~StderrCapture() {
        restore();
        ::unlink(path_.c_str());
    }
    StderrCapture(const StderrCapture&) = delete;
    StderrCapture& operator=(const StderrCapture&) = delete;
    std::string text() {
        restore();
        std::ifstream in(path_, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), {});
    }

private:
    void restore() {
        if (saved_ < 0) return;
        std::fflush(stderr);
        ::dup2(saved_, STDERR_FILENO);
        ::close(saved_);
        saved_ = -1;
    }
    std::string path_;
    int saved_ = -1;
};

void write_file(const std::string& path, std::string_view data) {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    REQUIRE(out.good());
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string read_range(const std::string& path, std::uint64_t offset, std::uint64_t size) {
    std::string data = read_file(path);
    REQUIRE(offset + size <= data.size());
    return data.substr(offset, size);
}

// Names in a directory (hidden ones too), sorted; empty if it does not exist.
std::vector<std::string> dir_entries(const std::string& path) {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(path, ec)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

std::string random_bytes(std::size_t size, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::string out(size, '\0');
    for (char& c : out) c = static_cast<char>(rng() & 0xFF);
    return out;
}

const std::string kLongName = std::string(196, 'n') + ".txt";  // 200 bytes
const std::string kUnicodeName = "\xC3\xA7\xC3\xA0/\xE6\x97\xA5\xE6\x9C\xAC.txt";  // "çà/日本.txt"

// Relative path -> contents. std::map order is byte-wise, the order pack promises.
std::map<std::string, std::string> sample_tree() {
    return {
        {"cls_a/001.jpg", random_bytes(3000, 1)},
        {"cls_a/002.jpg", random_bytes(70000, 2)},
        {"cls_b/sub/deep.bin", random_bytes(1500, 3)},
        {".hidden", "secret\n"},
        {"empty.txt", ""},
        {"long/" + kLongName, "long name\n"},
        {kUnicodeName, "konnichiwa\n"},
    };
}

void make_tree(const std::string& root, const std::map<std::string, std::string>& tree) {
    for (const auto& [path, data] : tree) write_file(root + "/" + path, data);
}

PackOptions options_for(const std::string& src, const std::string& out) {
    PackOptions options;
    options.src_dir = src;
    options.out_dir = out;
    options.progress = Progress::Never;
    return options;
}

Manifest load_manifest(const std::string& out_dir) {
    auto manifest = Manifest::parse(read_file(out_dir + "/manifest.json"), "manifest.json");
    if (!manifest) FAIL(manifest.error().message);
    return std::move(manifest).value();
}

// Every sample's bytes, read from its shard range, equal the source file.
void check_samples_match(const Manifest& m, const std::string& out_dir,
                         const std::map<std::string, std::string>& tree) {
    REQUIRE(m.samples.size() == tree.size());
    auto expected = tree.begin();
    for (const SampleInfo& s : m.samples) {
        CAPTURE(s.path);
        CHECK(s.path == expected->first);
        REQUIRE(s.shard < m.shards.size());
        CHECK(s.size == expected->second.size());
        CHECK(read_range(out_dir + "/" + m.shards[s.shard].name, s.offset, s.size) == expected->second);
        CHECK(s.hash == ContentHash::of(expected->second));
        ++expected;
    }
}

std::string run_command(const std::string& command) {
    std::string output;
    std::FILE* pipe = ::popen(command.c_str(), "r");
    REQUIRE(pipe != nullptr);
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) output.append(buf, n);
    CHECK(::pclose(pipe) == 0);
    return output;
}

std::vector<std::string> split_lines(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

}  // namespace

TEST_SUITE("pack") {

TEST_CASE("every sample's bytes sit at its manifest offset in the shard, with a matching hash") {
    FdLeakCheck fds;
    TempDir dir;
    auto tree = sample_tree();
    make_tree(dir / "src", tree);
    // A nested out-dir that does not exist yet: pack creates it with its parents.
    auto result = pack(options_for(dir / "src", dir / "out/a/b"));
    REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message));

    Manifest m = load_manifest(dir / "out/a/b");
    check_samples_match(m, dir / "out/a/b", tree);
    CHECK(m.block_size == kDefaultBlockSize);
    REQUIRE(m.shards.size() == 1);
    CHECK(m.shards[0].name == "shard-000000.tar");
    CHECK(dir_entries(dir / "out/a/b") == std::vector<std::string>{"manifest.json", "shard-000000.tar"});

    std::uint64_t total = 0;
    for (const auto& [path, data] : tree) total += data.size();
    CHECK(result->files == tree.size());
    CHECK(result->bytes == total);
    CHECK(result->shards == 1);
    CHECK(result->shard_bytes == fs::file_size(dir / "out/a/b/shard-000000.tar"));
}

TEST_CASE("shard size, hash and block hashes in the manifest match a recomputation over the file") {
    FdLeakCheck fds;
    TempDir dir;
    make_tree(dir / "src", sample_tree());
    auto options = options_for(dir / "src", dir / "out");
    options.block_size = 3000;  // not a multiple of the tar record size: blocks cut through headers
    auto result = pack(options);
    REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message));

    Manifest m = load_manifest(dir / "out");
    CHECK(m.block_size == 3000);
    REQUIRE(m.shards.size() == 1);
    const ShardInfo& shard = m.shards[0];
    std::string bytes = read_file(dir / "out" + "/" + shard.name);
    CHECK(shard.size == bytes.size());
    CHECK(bytes.size() % 512 == 0);
    CHECK(shard.hash == ContentHash::of(bytes));
    REQUIRE(shard.blocks.size() == (bytes.size() + 2999) / 3000);
    for (std::size_t i = 0; i < shard.blocks.size(); ++i) {
        CAPTURE(i);
        CHECK(shard.blocks[i] == ContentHash::of(std::string_view(bytes).substr(i * 3000, 3000)));
    }
}

TEST_CASE("shards are tar archives whose members are the samples, long and non-ASCII names included") {
    FdLeakCheck fds;
    TempDir dir;
    auto tree = sample_tree();
    make_tree(dir / "src", tree);
    auto result = pack(options_for(dir / "src", dir / "out"));
    REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message));
    Manifest m = load_manifest(dir / "out");
    std::string shard = dir / "out/shard-000000.tar";

    // libarchive's reader agrees on names, data offsets and sizes.
    auto members = read_tar_index(shard);
    REQUIRE_MESSAGE(members.ok(), (members.ok() ? "" : members.error().message));
    REQUIRE(members->size() == m.samples.size());
    for (std::size_t i = 0; i < members->size(); ++i) {
        CAPTURE(i);
        CHECK((*members)[i].path == m.samples[i].path);
        CHECK((*members)[i].offset == m.samples[i].offset);
        CHECK((*members)[i].size == m.samples[i].size);
    }

    // So does GNU tar, an independent implementation, and it extracts the same bytes.
    std::vector<std::string> expected;
    for (const auto& [path, data] : tree) expected.push_back(path);
    CHECK(split_lines(run_command("LC_ALL=C.UTF-8 tar -tf '" + shard + "'")) == expected);
    fs::create_directories(dir / "extract");
    run_command("LC_ALL=C.UTF-8 tar -xf '" + shard + "' -C '" + (dir / "extract") + "'");
    for (const auto& [path, data] : tree) {
        CAPTURE(path);
        CHECK(read_file(dir / "extract/" + path) == data);
    }
    std::string listing = run_command("TZ=UTC LC_ALL=C.UTF-8 tar -tvf '" + shard + "'");
    CHECK(listing.find("-rw-r--r-- 0/0") != std::string::npos);
    CHECK(listing.find("1970-01-01 00:00") != std::string::npos);
}

TEST_CASE("packing the same tree twice gives byte-identical shards and manifest") {
    FdLeakCheck fds;
    TempDir dir;
    auto tree = sample_tree();
    make_tree(dir / "src1", tree);
    // The second copy is created in reverse order (a different readdir order) with
    // other mtimes and modes: none of that may reach the output.
    for (auto it = tree.rbegin(); it != tree.rend(); ++it) write_file(dir / "src2/" + it->first, it->second);
    for (const auto& [path, data] : tree) {
        std::string file = dir / "src2/" + path;
        struct timeval times[2] = {{1000000, 0}, {2000000, 0}};
        REQUIRE(::utimes(file.c_str(), times) == 0);
        REQUIRE(::chmod(file.c_str(), 0600) == 0);
    }
    auto options = options_for(dir / "src1", dir / "out1");
    options.shard_size = 8192;  // several shards, so shard boundaries are compared too
    auto first = pack(options);
    REQUIRE_MESSAGE(first.ok(), (first.ok() ? "" : first.error().message));
    options.src_dir = dir / "src2";
    options.out_dir = dir / "out2";
    auto second = pack(options);
    REQUIRE_MESSAGE(second.ok(), (second.ok() ? "" : second.error().message));

    auto names = dir_entries(dir / "out1");
    CHECK(names.size() > 2);
    REQUIRE(names == dir_entries(dir / "out2"));
    for (const std::string& name : names) {
        CAPTURE(name);
        CHECK(read_file(dir / "out1/" + name) == read_file(dir / "out2/" + name));
    }
}

TEST_CASE("a small shard size splits the samples and gives an oversized sample a shard of its own") {
    FdLeakCheck fds;
    TempDir dir;
    std::map<std::string, std::string> tree;
    for (int i = 0; i < 12; ++i) {
        char name[32];
        std::snprintf(name, sizeof name, "s/%02d.bin", i);
        tree[name] = random_bytes(1000, static_cast<std::uint32_t>(100 + i));
    }
    tree["s/05_big.bin"] = random_bytes(20000, 99);  // sorts right after s/05.bin
    make_tree(dir / "src", tree);
    auto options = options_for(dir / "src", dir / "out");
    // Each 1000-byte member takes 512 (header) + 1024 (data, padded); two of them
    // plus the 1024-byte trailer fill 4096 exactly, so one byte less fits only one.
    std::size_t expected_shards = 0;
    std::size_t big_shard = 0;
    SUBCASE("two small samples fit") {
        options.shard_size = 4096;
        expected_shards = 7;  // 00+01, 02+03, 04+05, 05_big, 06+07, 08+09, 10+11
        big_shard = 3;
    }
    SUBCASE("one byte less: one sample per shard") {
        options.shard_size = 4095;
        expected_shards = 13;
        big_shard = 6;
    }
    auto result = pack(options);
    REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message));
    Manifest m = load_manifest(dir / "out");
    check_samples_match(m, dir / "out", tree);

    REQUIRE(m.shards.size() == expected_shards);
    CHECK(result->shards == expected_shards);
    std::vector<std::vector<std::string>> members(m.shards.size());
    for (const SampleInfo& s : m.samples) members[s.shard].push_back(s.path);
    CHECK(members[big_shard] == std::vector<std::string>{"s/05_big.bin"});
    CHECK(m.shards[big_shard].size > options.shard_size);
    for (std::size_t i = 0; i < m.shards.size(); ++i) {
        CAPTURE(i);
        char name[32];
        std::snprintf(name, sizeof name, "shard-%06zu.tar", i);
        CHECK(m.shards[i].name == name);
        CHECK(!members[i].empty());
        if (members[i].size() > 1) CHECK(m.shards[i].size <= options.shard_size);
        CHECK(m.shards[i].size == fs::file_size(dir / "out/" + m.shards[i].name));
    }
    // Samples fill shards in order: shard indices never go back.
    CHECK(std::is_sorted(m.samples.begin(), m.samples.end(),
                         [](const SampleInfo& a, const SampleInfo& b) { return a.shard < b.shard; }));
}

TEST_CASE("shard locations are the file name, or the base url joined with one slash") {
    FdLeakCheck fds;
    TempDir dir;
    make_tree(dir / "src", {{"a.txt", "a"}});
    auto options = options_for(dir / "src", dir / "out");
    std::string expected;
    SUBCASE("no base url") { expected = "shard-000000.tar"; }
    SUBCASE("base url without a trailing slash") {
        options.base_url = "https://cdn.example.com/datasets/x";
        expected = "https://cdn.example.com/datasets/x/shard-000000.tar";
    }
    SUBCASE("base url with a trailing slash") {
        options.base_url = "https://cdn.example.com/datasets/x/";
        expected = "https://cdn.example.com/datasets/x/shard-000000.tar";
    }
    auto result = pack(options);
    REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message));
    Manifest m = load_manifest(dir / "out");
    REQUIRE(m.shards.size() == 1);
    CHECK(m.shards[0].location == expected);
    CHECK(m.shards[0].name == "shard-000000.tar");
}

// Tests run as root, so chmod 000 cannot make a file unreadable. Two failures
// that hold for root: a symlink loop (ELOOP while walking, before anything is
// written) and a symlink to /proc/self/mem, a regular file whose read at offset
// 0 fails with EIO, placed last so that several shards are already written.
TEST_CASE("an unreadable file fails naming it and leaves no manifest, shard or partial file") {
    FdLeakCheck fds;
    TempDir dir;
    std::map<std::string, std::string> tree;
    for (int i = 0; i < 6; ++i) tree["a/" + std::to_string(i) + ".bin"] = random_bytes(1000, static_cast<std::uint32_t>(i));
    make_tree(dir / "src", tree);
    auto options = options_for(dir / "src", dir / "out/nested");
    std::string culprit;
    std::string reason;
    SUBCASE("symlink loop") {
        REQUIRE(::symlink("loop_b", (dir / "src/loop_a").c_str()) == 0);
        REQUIRE(::symlink("loop_a", (dir / "src/loop_b").c_str()) == 0);
        culprit = dir / "src/loop_a";
        reason = "Too many levels of symbolic links";
    }
    SUBCASE("read error after several shards were written") {
        REQUIRE(::symlink("/proc/self/mem", (dir / "src/z_mem").c_str()) == 0);
        options.shard_size = 4096;
        culprit = dir / "src/z_mem";
        reason = "read failed: Input/output error";
    }
    SUBCASE("out-dir already exists and holds an earlier pack") {
        make_tree(dir / "out/nested", {{"manifest.json", "old"}, {"keep.txt", "keep"}});
        REQUIRE(::symlink("/proc/self/mem", (dir / "src/z_mem").c_str()) == 0);
        options.shard_size = 4096;
        culprit = dir / "src/z_mem";
        reason = "read failed";
    }
    auto result = pack(options);
    REQUIRE_FALSE(result.ok());
    CAPTURE(result.error().message);
    CHECK(result.error().message.find(culprit) != std::string::npos);
    CHECK(result.error().message.find(reason) != std::string::npos);
    if (fs::exists(dir / "out/nested/keep.txt")) {
        // Earlier output is untouched: shards are only renamed into place at the end.
        CHECK(dir_entries(dir / "out/nested") == std::vector<std::string>{"keep.txt", "manifest.json"});
        CHECK(read_file(dir / "out/nested/manifest.json") == "old");
    } else {
        // The directories pack made are gone again, with everything in them.
        CHECK_FALSE(fs::exists(dir / "out"));
    }
}

TEST_CASE("a file name that is not valid UTF-8 is rejected naming it") {
    FdLeakCheck fds;
    TempDir dir;
    make_tree(dir / "src", {{"ok.txt", "ok"}, {"sub/bad\xFF.txt", "bad"}});
    auto result = pack(options_for(dir / "src", dir / "out"));
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code == Errc::InvalidArgument);
    CHECK(result.error().message.find("sub/bad\\xFF.txt") != std::string::npos);
    CHECK(result.error().message.find("UTF-8") != std::string::npos);
    CHECK_FALSE(fs::exists(dir / "out"));
}

TEST_CASE("fifos and symlinks to directories are skipped with a warning, symlinks to files are followed") {
    FdLeakCheck fds;
    TempDir dir;
    make_tree(dir / "src", {{"data/real.txt", "real bytes"}});
    REQUIRE(::symlink("data/real.txt", (dir / "src/link_to_file").c_str()) == 0);
    REQUIRE(::symlink("data", (dir / "src/link_to_dir").c_str()) == 0);
    REQUIRE(::mkfifo((dir / "src/pipe").c_str(), 0644) == 0);
    auto options = options_for(dir / "src", dir / "out");
    options.progress = Progress::Always;
    StderrCapture capture;
    auto result = pack(options);
    std::string err = capture.text();
    REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message));
    Manifest m = load_manifest(dir / "out");
    check_samples_match(m, dir / "out", {{"data/real.txt", "real bytes"}, {"link_to_file", "real bytes"}});
    CAPTURE(err);
    CHECK(err.find("skipping symlink to a directory: " + (dir / "src/link_to_dir")) != std::string::npos);
    CHECK(err.find("skipping fifo: " + (dir / "src/pipe")) != std::string::npos);
    // The progress line: redrawn with \r, cleared to end of line, finished with a newline.
    CHECK(err.find("\r\033[Kpacking: 2/2 files") != std::string::npos);
    CHECK(!err.empty());
    CHECK(err.back() == '\n');
}

TEST_CASE("an output directory inside the source tree is not packed into itself") {
    FdLeakCheck fds;
    TempDir dir;
    make_tree(dir / "src", {{"a.txt", "a"}, {"z.txt", "z"}});
    auto options = options_for(dir / "src", dir / "src/out");
    REQUIRE(pack(options).ok());
    StderrCapture capture;
    auto again = pack(options);  // now src/out exists and holds a shard and a manifest
    REQUIRE_MESSAGE(again.ok(), (again.ok() ? "" : again.error().message));
    CHECK(capture.text().find("skipping the output directory") != std::string::npos);
    check_samples_match(load_manifest(dir / "src/out"), dir / "src/out", {{"a.txt", "a"}, {"z.txt", "z"}});

    auto same = pack(options_for(dir / "src", dir / "src/"));
    REQUIRE_FALSE(same.ok());
    CHECK(same.error().code == Errc::InvalidArgument);
}

TEST_CASE("an empty tree gives zero shards and a manifest with empty arrays") {
    FdLeakCheck fds;
    TempDir dir;
    fs::create_directories(dir / "src/empty_dir");
    StderrCapture capture;
    auto result = pack(options_for(dir / "src", dir / "out"));
    std::string err = capture.text();
    REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message));
    CHECK(err.find("no files to pack") != std::string::npos);
    CHECK(result->files == 0);
    CHECK(result->shards == 0);
    Manifest m = load_manifest(dir / "out");
    CHECK(m.shards.empty());
    CHECK(m.samples.empty());
    CHECK(dir_entries(dir / "out") == std::vector<std::string>{"manifest.json"});
}

TEST_CASE("a full disk reports No space left on device and leaves nothing behind") {
    FdLeakCheck fds;
    TempDir dir;
    std::map<std::string, std::string> tree;
    for (int i = 0; i < 3; ++i) tree["big/" + std::to_string(i) + ".bin"] = random_bytes(1024 * 1024, static_cast<std::uint32_t>(i));
    make_tree(dir / "src", tree);
    fs::create_directories(dir / "out");
    std::string out = dir / "out";
    if (::mount("tmpfs", out.c_str(), "tmpfs", 0, "size=1M") != 0) {
        MESSAGE("skipping: cannot mount a tmpfs (" << std::strerror(errno) << ")");
        return;
    }
    struct Unmount {
        std::string path;
        ~Unmount() { ::umount(path.c_str()); }
    } unmount{out};

    auto result = pack(options_for(dir / "src", out));
    REQUIRE_FALSE(result.ok());
    CAPTURE(result.error().message);
    CHECK(result.error().code == Errc::NoSpace);
    CHECK(result.error().message.find(out + "/.shard-000000.tar.partial: write failed: No space left on device") !=
          std::string::npos);
    CHECK(dir_entries(out).empty());
}

TEST_CASE("ShardWriter reports member offsets, and abort removes its file") {
    FdLeakCheck fds;
    TempDir dir;
    std::string path = dir / "one.tar";
    SUBCASE("finish") {
        auto writer = ShardWriter::create(path, 1024);
        REQUIRE(writer.ok());
        auto a = writer->add_data("a.txt", "hello");
        auto b = writer->add_data("dir/b.bin", random_bytes(700, 7));
        REQUIRE(a.ok());
        REQUIRE(b.ok());
        CHECK(a->offset == 512);
        CHECK(b->offset == 512 + 512 + 512);  // a's header and padded data, then b's header
        CHECK(writer->member_count() == 2);
        // b's padding is only written when the next member or the trailer is.
        CHECK(writer->bytes_written() == 512 + 512 + 512 + 700);
        CHECK(writer->projected_size() == 512 + 512 + 512 + 1024 + kTarTrailerSize);
        auto digest = writer->finish();
        REQUIRE(digest.ok());
        std::string bytes = read_file(path);
        CHECK(digest->size == bytes.size());
        CHECK(bytes.size() == 512 + 512 + 512 + 1024 + kTarTrailerSize);
        CHECK(digest->hash == ContentHash::of(bytes));
        CHECK(digest->blocks.size() == 4);
        CHECK(bytes.substr(a->offset, 5) == "hello");
        CHECK(b->hash == ContentHash::of(random_bytes(700, 7)));
        CHECK(ShardWriter::estimate_member_size("a.txt", 5) == 1024);
    }
    SUBCASE("abort") {
        auto writer = ShardWriter::create(path, 1024);
        REQUIRE(writer.ok());
        REQUIRE(writer->add_data("a.txt", "hello").ok());
        CHECK(fs::exists(path));
        writer->abort();
        CHECK_FALSE(fs::exists(path));
    }
    SUBCASE("destroyed unfinished") {
        {
            auto writer = ShardWriter::create(path, 1024);
            REQUIRE(writer.ok());
            REQUIRE(writer->add_data("a.txt", "hello").ok());
        }
        CHECK_FALSE(fs::exists(path));
    }
}

}  // TEST_SUITE
