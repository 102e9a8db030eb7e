# Homebrew formula template for confab-sync. Fill in url/sha256 (and homepage) for a release.
class ConfabSync < Formula
  desc "Live, lossless sync of Claude Code sessions to a confab backend or local archive"
  homepage "@HOMEPAGE@"
  url "@RELEASE_TARBALL_URL@"
  sha256 "@RELEASE_TARBALL_SHA256@"
  license "MIT"

  depends_on "rust" => :build

  def install
    system "cargo", "install", *std_cargo_args
    # Completions and the man page: once the generating build step exists, install them with
    # generate_completions_from_executable / man1.install here.
  end

  def caveats
    <<~EOS
      Register the Claude Code hooks (once per user):
        #{opt_bin}/confab-sync install --hooks
      Each session's daemon then runs as a launchd agent (dev.confab.sync.<session id>);
      `confab-sync status` lists them. Run install through #{opt_bin} as shown: the hooks
      record the path it was run as, and that one stays valid across upgrades.
    EOS
  end

  test do
    assert_match "run", shell_output("#{bin}/confab-sync --help")
  end
end
