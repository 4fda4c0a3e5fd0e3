// The pure parts of the S3 and Shelby backends: key encoding, canonical
// queries (what libcurl 7.88 signs verbatim), URL parsing, XML unescaping,
// and how relative shard locations resolve under s3:// and shelby:// manifests.
#include <doctest/doctest.h>

#include "shelbyfs/manifest.h"
#include "shelbyfs/s3.h"
#include "shelbyfs/shelby.h"
#include "shelbyfs/storage.h"

using namespace shelbyfs;

TEST_CASE("uri_encode keeps unreserved bytes and encodes the rest in uppercase hex") {
    CHECK(uri_encode("AZaz09-._~", false) == "AZaz09-._~");
    CHECK(uri_encode("data sets/a+b=c%.tar", true) == "data%20sets/a%2Bb%3Dc%25.tar");
    CHECK(uri_encode("a/b", false) == "a%2Fb");
    CHECK(uri_encode("?#&:@!$'()*,;", true) == "%3F%23%26%3A%40%21%24%27%28%29%2A%2C%3B");
    CHECK(uri_encode("\xC3\xBC", true) == "%C3%BC");  // ü in UTF-8
    CHECK(uri_encode(std::string_view("\0\x7f", 2), true) == "%00%7F");
}

TEST_CASE("canonical_query sorts by key, always writes '=', encodes '/'") {
    // The order ListObjectsV2 needs signed: continuation-token < delimiter < list-type < prefix.
    CHECK(canonical_query({{"prefix", "a/b c"}, {"list-type", "2"}, {"delimiter", "/"}, {"continuation-token", "x+y="}}) ==
          "continuation-token=x%2By%3D&delimiter=%2F&list-type=2&prefix=a%2Fb%20c");
    CHECK(canonical_query({{"uploads", ""}}) == "uploads=");
    CHECK(canonical_query({{"uploadId", "ID"}, {"partNumber", "10"}}) == "partNumber=10&uploadId=ID");
    CHECK(canonical_query({}).empty());
}

TEST_CASE("parse_s3_url splits bucket and raw key") {
    auto u = parse_s3_url("s3://my-bucket/data sets/a+b=c%/ü/shard 1.tar");
    REQUIRE(u);
    CHECK(u->bucket == "my-bucket");
    CHECK(u->key == "data sets/a+b=c%/ü/shard 1.tar");
    auto root = parse_s3_url("s3://bucket");
    REQUIRE(root);
    CHECK(root->key.empty());
    auto prefix = parse_s3_url("s3://bucket/p/");
    REQUIRE(prefix);
    CHECK(prefix->key == "p/");
    CHECK(parse_s3_url("http://bucket/k").error().message.find("not an s3:// URL") != std::string::npos);
    CHECK(parse_s3_url("s3:///k").error().message.find("no bucket name") != std::string::npos);
    CHECK(parse_s3_url("s3://ab/k").error().message.find("bad bucket name 'ab'") != std::string::npos);
    CHECK(parse_s3_url("s3://bu cket/k").error().code == Errc::InvalidArgument);
}

TEST_CASE("parse_shelby_url takes an address and a blob name") {
    const std::string account = "0x" + std::string(64, 'a');
    auto u = parse_shelby_url("shelby://" + account + "/dir/blob name+1.tar");
    REQUIRE(u);
    CHECK(u->account == account);
    CHECK(u->name == "dir/blob name+1.tar");
    CHECK(parse_shelby_url("shelby://alice/x").error().message.find("0x and up to 64 hex digits") != std::string::npos);
    CHECK(parse_shelby_url("shelby://0x/x").error().code == Errc::InvalidArgument);
    CHECK(parse_shelby_url("shelby://0x" + std::string(65, '1') + "/x").error().code == Errc::InvalidArgument);
    CHECK(parse_shelby_url("shelby://0x1/" + std::string(1025, 'n')).error().message.find("at most 1024") !=
          std::string::npos);
}

TEST_CASE("ShelbyReader builds RPC URLs with the name encoded and '/' kept") {
    HttpClient http;
    ShelbySettings settings;
    settings.rpc_url = "http://127.0.0.1:9090/shelby/";
    ShelbyReader reader(http, settings);
    CHECK(reader.blob_url({"0x1", "a b/c+d%.tar"}) == "http://127.0.0.1:9090/shelby/v1/blobs/0x1/a%20b/c%2Bd%25.tar");
}

TEST_CASE("S3Client builds path-style URLs") {
    HttpClient http;
    S3Settings settings;
    settings.endpoint = "http://127.0.0.1:4568/";
    S3Client client(http, settings);
    CHECK(client.object_url("bucket", "data sets/ü?#.tar") ==
          "http://127.0.0.1:4568/bucket/data%20sets/%C3%BC%3F%23.tar");
}

TEST_CASE("xml_unescape decodes entities and character references") {
    CHECK(xml_unescape("a&amp;b&lt;c&gt;d&quot;e&apos;f") == "a&b<c>d\"e'f");
    CHECK(xml_unescape("&#32;&#x41;&#xFC;&#8364;&#x1F600;") == " A\xC3\xBC\xE2\x82\xAC\xF0\x9F\x98\x80");
    CHECK(xml_unescape("no entity & here; &bogus;") == "no entity & here; &bogus;");
}

TEST_CASE("relative shard locations resolve under s3:// and shelby:// manifests, keys kept raw") {
    CHECK(resolve_location("s3://b/data sets/a?b#c/manifest.json", "shard 1.tar") == "s3://b/data sets/a?b#c/shard 1.tar");
    CHECK(resolve_location("s3://b/manifest.json", "/other/x.tar") == "s3://b/other/x.tar");
    CHECK(resolve_location("shelby://0x1/ds/manifest.json", "s.tar") == "shelby://0x1/ds/s.tar");
    // http(s) still drops a query string.
    CHECK(resolve_location("http://h/d/manifest.json?sig=1", "s.tar") == "http://h/d/s.tar");
    CHECK(is_supported_scheme("s3://b/k"));
    CHECK(is_supported_scheme("shelby://0x1/k"));
    CHECK_FALSE(is_supported_scheme("ftp://h/k"));
}

TEST_CASE("manifests accept s3:// and shelby:// shard locations and reject other schemes") {
    auto doc = [](const std::string& location) {
        return std::string(R"({"format":"shelbyfs-manifest","version":1,"block_size":1024,"shards":[{"name":"s.tar","location":")") +
               location + R"(","size":0,"xxh3_128":"99aa06d3014798d86001c324468d497f","blocks":[]}],"samples":[]})";
    };
    CHECK(Manifest::parse(doc("s3://bucket/data sets/s.tar"), "m.json"));
    CHECK(Manifest::parse(doc("shelby://0x1/s.tar"), "m.json"));
    auto bad = Manifest::parse(doc("ftp://h/s.tar"), "m.json");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.find("unsupported location scheme") != std::string::npos);
}
