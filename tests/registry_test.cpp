// Registry: every refusal reason, the out-of-process scan surviving crashes
// and hangs, trust checks, the scan cache, search order and duplicates.
#include <mango/registry/registry.hpp>

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using namespace mango::registry;

namespace {

Options test_options() {
    Options o;
    o.use_env = false;
    o.use_builtin = false;
    o.cache_file = "-";
    o.scanner = MANGO_SCANNER_PATH;
    o.timeout_ms = 3000;
    return o;
}

std::string fixture(const std::string &name) { return std::string(MANGO_FIXTURE_DIR) + "/" + name; }

LibraryScan scan_one(const std::string &dir) {
    Registry r = Registry::scan_paths({fixture(dir)}, test_options());
    EXPECT_EQ(r.libraries().size(), 1u) << dir;
    return r.libraries().empty() ? LibraryScan{} : r.libraries()[0];
}

// A private copy of a fixture folder, for permission games.
fs::path copy_fixture(const std::string &name, const std::string &as) {
    const fs::path dir = fs::path(MANGO_TEST_TMP) / as;
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::permissions(dir, fs::perms(0755));
    for (const auto &e : fs::directory_iterator(fixture(name))) fs::copy_file(e.path(), dir / e.path().filename());
    return dir;
}

}  // namespace

TEST(Registry, GoodPluginInPlainC) {
    LibraryScan s = scan_one("good");
    ASSERT_TRUE(s.ok) << s.reason;
    EXPECT_EQ(s.plugin_name, "fixture");
    EXPECT_EQ(s.abi_version, 1u);
    ASSERT_EQ(s.components.size(), 1u);
    EXPECT_EQ(s.components[0].kind, "adapter");
    EXPECT_EQ(s.components[0].name, "c_identity");
}

struct Refusal {
    const char *fixture;
    const char *reason;
    bool blacklisted;
};

class Refused : public ::testing::TestWithParam<Refusal> {};

TEST_P(Refused, WithOneLineReason) {
    const Refusal &c = GetParam();
    LibraryScan s = scan_one(c.fixture);
    EXPECT_FALSE(s.ok);
    EXPECT_NE(s.reason.find(c.reason), std::string::npos) << "reason was: " << s.reason;
    EXPECT_EQ(s.reason.find('\n'), std::string::npos) << s.reason;
    EXPECT_EQ(s.blacklisted, c.blacklisted) << s.reason;
    EXPECT_TRUE(s.components.empty());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Refused,
                         ::testing::Values(Refusal{"not_a_library", "not a loadable shared library", false},
                                           Refusal{"no_entry", "no entry symbol 'mango_plugin_entry_v1'", false},
                                           Refusal{"abi_mismatch", "built for plugin ABI v99, this host speaks ABI v1", false},
                                           Refusal{"small_struct", "plugin descriptor struct_size 8 is smaller than ABI v1's 48", false},
                                           Refusal{"small_component", "struct_size 4 is smaller than ABI v1's 48", false},
                                           Refusal{"small_vtable", "function table struct_size 8 is smaller than ABI v1's 32", false},
                                           Refusal{"null_vtable", "function table has NULL entries", false},
                                           Refusal{"unknown_kind", "has unknown kind 42", false},
                                           Refusal{"bad_schema", "unsupported type 'complex'", false},
#ifdef MANGO_SANITIZED  // the sanitizer's handler turns the crash into exit status 1
                                           Refusal{"crash", "exited with status 1 while loading", true},
#else
                      Refusal{"crash", "crashed while loading: signal 11", true},
#endif
                                           Refusal{"abort_ctor", "crashed while loading: signal 6", true},
                                           Refusal{"exit_ctor", "exited with status 3 while loading", true}),
                         [](const auto &info) { return std::string(info.param.fixture); });

TEST(Registry, HangingLibraryIsKilledAfterTimeout) {
    Options o = test_options();
    o.timeout_ms = 500;
    const auto t0 = std::chrono::steady_clock::now();
    Registry r = Registry::scan_paths({fixture("hang")}, o);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_EQ(r.libraries().size(), 1u);
    EXPECT_FALSE(r.libraries()[0].ok);
    EXPECT_TRUE(r.libraries()[0].blacklisted);
    EXPECT_NE(r.libraries()[0].reason.find("hung while loading"), std::string::npos);
    EXPECT_LT(secs, 5.0);
}

TEST(Registry, WorldWritableFolderOrFileRefused) {
    fs::path dir = copy_fixture("good", "world_writable_dir");
    fs::permissions(dir, fs::perms(0777));
    Registry r = Registry::scan_paths({dir.string()}, test_options());
    ASSERT_EQ(r.libraries().size(), 1u);
    EXPECT_NE(r.libraries()[0].reason.find("world-writable"), std::string::npos) << r.libraries()[0].reason;

    dir = copy_fixture("good", "world_writable_file");
    fs::permissions(dir / "fixture_good.so", fs::perms(0777));
    r = Registry::scan_paths({dir.string()}, test_options());
    EXPECT_NE(r.libraries()[0].reason.find("library"), std::string::npos);
    EXPECT_NE(r.libraries()[0].reason.find("world-writable"), std::string::npos);
}

TEST(Registry, LibraryOwnedByAnotherUserRefused) {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to give a file away";
    fs::path dir = copy_fixture("good", "other_owner");
    ASSERT_EQ(chown((dir / "fixture_good.so").c_str(), 65534, 65534), 0);
    Registry r = Registry::scan_paths({dir.string()}, test_options());
    EXPECT_NE(r.libraries()[0].reason.find("owned by uid 65534"), std::string::npos) << r.libraries()[0].reason;
}

TEST(Registry, TrustFilePinsHashes) {
    fs::path dir = copy_fixture("good", "pinned");
    const std::string lib = (dir / "fixture_good.so").string();
    Options o = test_options();
    o.trust_file = (dir / "trust.txt").string();

    std::ofstream(o.trust_file) << sha256_file(lib) << "  fixture_good.so\n";
    Registry r = Registry::scan_paths({lib}, o);
    EXPECT_TRUE(r.libraries()[0].ok) << r.libraries()[0].reason;

    std::ofstream(o.trust_file) << std::string(64, '0') << "  " << lib << "\n";
    r = Registry::scan_paths({lib}, o);
    EXPECT_FALSE(r.libraries()[0].ok);
    EXPECT_NE(r.libraries()[0].reason.find("does not match the pin"), std::string::npos) << r.libraries()[0].reason;
}

TEST(Registry, Sha256MatchesFips180Vectors) {
    const fs::path f = fs::path(MANGO_TEST_TMP) / "abc.txt";
    fs::create_directories(f.parent_path());
    std::ofstream(f) << "abc";
    EXPECT_EQ(sha256_file(f.string()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    std::ofstream(f) << "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    EXPECT_EQ(sha256_file(f.string()), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    std::ofstream(f, std::ios::trunc).close();
    EXPECT_EQ(sha256_file(f.string()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Registry, CacheServesWarmScansAndKeepsBlacklist) {
    Options o = test_options();
    const fs::path cache = fs::path(MANGO_TEST_TMP) / "cache_test" / "scan.json";
    fs::remove_all(cache.parent_path());
    o.cache_file = cache.string();
    fs::path good = copy_fixture("good", "cached_good");
    o.plugin_paths = {good.string(), fixture("crash")};

    Registry cold = Registry::discover(o);
    ASSERT_EQ(cold.libraries().size(), 2u);
    for (const auto &s : cold.libraries()) EXPECT_FALSE(s.from_cache);
    ASSERT_TRUE(fs::exists(cache));

    Registry warm = Registry::discover(o);
    ASSERT_EQ(warm.libraries().size(), 2u);
    for (const auto &s : warm.libraries()) EXPECT_TRUE(s.from_cache) << s.path;
    EXPECT_TRUE(warm.libraries()[0].ok);
    EXPECT_TRUE(warm.libraries()[1].blacklisted);
    EXPECT_NE(warm.find("adapter", "c_identity"), nullptr);

    // Changing the file (mtime/size) forces a rescan.
    fs::last_write_time(good / "fixture_good.so", fs::file_time_type::clock::now() + std::chrono::seconds(5));
    Registry changed = Registry::discover(o);
    EXPECT_FALSE(changed.libraries()[0].from_cache);
    EXPECT_TRUE(changed.libraries()[1].from_cache);
}

TEST(Registry, SearchOrderFirstWinsAndDuplicatesAreReported) {
    Options o = test_options();
    o.plugin_paths = {fixture("duplicate"), MANGO_PLUGIN_DIR};
    Registry r = Registry::discover(o);
    const ComponentInfo *linear = r.find("adapter", "linear");
    ASSERT_NE(linear, nullptr);
    EXPECT_NE(linear->library.find("fixture_duplicate"), std::string::npos);
    ASSERT_EQ(r.duplicates().size(), 1u);
    EXPECT_NE(r.duplicates()[0].find("mango_adapter_linear.so is shadowed by"), std::string::npos) << r.duplicates()[0];
}

TEST(Registry, EnvironmentPathComesAfterCommandLine) {
    Options o = test_options();
    o.use_env = true;
    o.plugin_paths = {MANGO_PLUGIN_DIR};
    setenv("MANGO_PLUGIN_PATH", (fixture("good") + ":" + fixture("duplicate")).c_str(), 1);
    Registry r = Registry::discover(o);
    unsetenv("MANGO_PLUGIN_PATH");
    ASSERT_EQ(r.search_path().size(), 3u);
    EXPECT_EQ(r.search_path()[1], fixture("good"));
    EXPECT_NE(r.find("adapter", "c_identity"), nullptr);
    EXPECT_NE(r.find("adapter", "linear")->library.find("mango_adapter_linear"), std::string::npos);
}

TEST(Registry, CloseNamesForTypos) {
    Options o = test_options();
    o.plugin_paths = {MANGO_PLUGIN_DIR};
    Registry r = Registry::discover(o);
    auto close = r.close_names("simpel");
    ASSERT_FALSE(close.empty());
    EXPECT_EQ(close[0], "simple");
    EXPECT_EQ(r.close_names("bottle")[0], "bottleneck");
    EXPECT_TRUE(r.close_names("zzzzzzzzzz").empty());
}
