package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Locale compiles the locale name.UTF-8 (en_US, say) into a directory of the
// test and returns the environment that makes a child process use it
// (LOCPATH and LC_ALL): the locale a distribution's service may run under.
func Locale(t testing.TB, name string) []string {
	t.Helper()
	localedef, err := exec.LookPath("localedef")
	if err != nil {
		t.Fatal("localedef is not on PATH: it comes with libc (Debian: libc-bin)")
	}
	if _, err := os.Stat(filepath.Join("/usr/share/i18n/locales", name)); err != nil {
		t.Fatalf("no source of the %s locale in /usr/share/i18n: install Debian's locales package (.ci/run does)", name)
	}
	dir := t.TempDir()
	if out, err := exec.Command(localedef, "-i", name, "-f", "UTF-8", filepath.Join(dir, name+".UTF-8")).CombinedOutput(); err != nil {
		t.Fatalf("localedef: %v\n%s", err, out)
	}
	return []string{"LOCPATH=" + dir, "LC_ALL=" + name + ".UTF-8"}
}
