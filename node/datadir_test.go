//go:build unix

package node

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/p2pkey/p2pkey/internal/testkit"
)

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestSecureDataDirTightens: a 0755 data directory and a 0644 identity are
// tightened to 0700 and 0600, with a message naming both modes; a second
// call changes nothing.
func TestSecureDataDirTightens(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	id := filepath.Join(dir, "identity.key")
	if err := os.WriteFile(id, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Chmod after creation: the test process's umask must not matter.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(id, 0o644); err != nil {
		t.Fatal(err)
	}
	changes, err := SecureDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := mode(t, dir); got != 0o700 {
		t.Fatalf("data directory mode %04o, want 0700", got)
	}
	if got := mode(t, id); got != 0o600 {
		t.Fatalf("identity mode %04o, want 0600", got)
	}
	if len(changes) != 2 {
		t.Fatalf("changes = %v, want the directory and the identity", changes)
	}
	if msg := changes[0].String(); msg != "tightened "+dir+" from 0755 to 0700" {
		t.Fatalf("message %q", msg)
	}
	if msg := changes[1].String(); msg != "tightened "+id+" from 0644 to 0600" {
		t.Fatalf("message %q", msg)
	}
	if changed, err := secureDataDir(dir); err != nil || changed {
		t.Fatalf("second pass: changed %v, err %v", changed, err)
	}
}

// TestSecureDataDirModes covers the modes one by one: only group and other
// bits are taken away, and a private directory is left alone.
func TestSecureDataDirModes(t *testing.T) {
	for _, tc := range []struct {
		from, to os.FileMode
	}{
		{0o700, 0o700}, {0o750, 0o700}, {0o711, 0o700}, {0o777, 0o700}, {0o702, 0o700}, {0o500, 0o500},
	} {
		dir := filepath.Join(t.TempDir(), "d")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, tc.from); err != nil {
			t.Fatal(err)
		}
		changed, err := secureDataDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := mode(t, dir); got != tc.to || changed != (tc.from != tc.to) {
			t.Errorf("%04o: became %04o (changed %v), want %04o", tc.from, got, changed, tc.to)
		}
		os.Chmod(dir, 0o700)
	}
}

// TestSecureDataDirMissing: a directory that does not exist yet is not an
// error (Init creates it 0700).
func TestSecureDataDirMissing(t *testing.T) {
	changes, err := SecureDataDir(filepath.Join(t.TempDir(), "nope"))
	if err != nil || len(changes) != 0 {
		t.Fatalf("missing dir: %v, %v", changes, err)
	}
}

// TestSecureDataDirNotADirectory: a file where the data directory should be
// is refused.
func TestSecureDataDirNotADirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := SecureDataDir(f); err == nil {
		t.Fatal("a regular file was accepted as a data directory")
	}
}

// TestSecureDataDirForeignOwner: a data directory, or an identity, owned by
// another user is refused and left as it was. Needs root to chown.
func TestSecureDataDirForeignOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root")
	}
	const nobody = 65534
	t.Run("dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		_, err := SecureDataDir(dir)
		if !errors.Is(err, ErrForeignOwner) || !testkit.ErrorSays(err, "uid 65534") {
			t.Fatalf("foreign data directory: %v", err)
		}
		if got := mode(t, dir); got != 0o755 {
			t.Fatalf("a refused directory was changed to %04o", got)
		}
	})
	t.Run("identity", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		id := filepath.Join(dir, "identity.key")
		if err := os.WriteFile(id, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(id, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		if _, err := SecureDataDir(dir); !errors.Is(err, ErrForeignOwner) {
			t.Fatalf("foreign identity: %v", err)
		}
	})
}
