package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/p2pkey/p2pkey/node"
	"golang.org/x/sys/unix"
)

// keyDaemon is a fake daemon whose key for a purpose is SHA-256(purpose).
func keyDaemon(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/key", func(w http.ResponseWriter, r *http.Request) {
		var req node.KeyRequest
		json.NewDecoder(r.Body).Decode(&req)
		k := sha256.Sum256([]byte(req.Purpose))
		reply(http.StatusOK, node.KeyResponse{Purpose: req.Purpose, Key: k[:]})(w, r)
	})
	return fakeDaemon(t, mux)
}

// openPTY returns a pseudo-terminal's two ends.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open the pty: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// cliTo runs the binary with stdout going to out (a terminal or /dev/null).
func cliTo(t *testing.T, data string, out *os.File, stdin io.Reader, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--data", data}, args...)...)
	var errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, out, &errb
	err := cmd.Run()
	r := result{stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestBinaryToTerminal: encrypt and key --format raw refuse to write to a
// terminal (exit 2, nothing written) unless -o FILE or --armor; they write
// to /dev/null, which is a character device but no terminal.
func TestBinaryToTerminal(t *testing.T) {
	data := keyDaemon(t)
	master, tty := openPTY(t)
	for _, args := range [][]string{{"encrypt"}, {"key", "--format", "raw"}, {"encrypt", "--purpose", "x", "--wait"}} {
		r := cliTo(t, data, tty, strings.NewReader("secret"), args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, "refusing to write") || !strings.Contains(r.stderr, "-o FILE") {
			t.Errorf("%s to a terminal: %v", strings.Join(args, " "), r)
		}
	}
	// Nothing reached the terminal.
	fd := int(master.Fd())
	unix.SetNonblock(fd, true)
	if n, _ := unix.Read(fd, make([]byte, 64)); n > 0 {
		t.Errorf("%d bytes reached the terminal", n)
	}
	// Text forms go to the terminal.
	for _, args := range [][]string{{"encrypt", "--armor"}, {"key"}, {"key", "--format", "base64"}} {
		if r := cliTo(t, data, tty, strings.NewReader("secret"), args...); r.code != 0 {
			t.Errorf("%s to a terminal: %v", strings.Join(args, " "), r)
		}
	}
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	for _, args := range [][]string{{"encrypt"}, {"key", "--format", "raw"}} {
		if r := cliTo(t, data, null, strings.NewReader("secret"), args...); r.code != 0 {
			t.Errorf("%s > /dev/null: %v", strings.Join(args, " "), r)
		}
	}
	// -o FILE, from a terminal session: the file gets the bytes (0600).
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "k")
	if r := cliTo(t, data, tty, nil, "key", "--purpose", "disk", "--format", "raw", "-o", keyFile); r.code != 0 {
		t.Fatalf("key -o: %v", r)
	}
	want := sha256.Sum256([]byte("disk"))
	if got, _ := os.ReadFile(keyFile); !bytes.Equal(got, want[:]) || modeOf(t, keyFile) != 0o600 {
		t.Errorf("key -o wrote %x (mode %v)", got, modeOf(t, keyFile))
	}
	if r := cliTo(t, data, tty, strings.NewReader("secret"), "encrypt", "-o", filepath.Join(dir, "e.age")); r.code != 0 {
		t.Fatalf("encrypt -o: %v", r)
	}
}

// TestDecryptAuthenticated: decrypt writes nothing until the whole file is
// authenticated: a truncated or altered file leaves stdout empty and no
// file (nor temporary file) behind -o; a file for another purpose says so;
// an armoured file opens too.
func TestDecryptAuthenticated(t *testing.T) {
	data := keyDaemon(t)
	dir := t.TempDir()
	plain := make([]byte, 300<<10) // several of age's 64 KiB chunks
	rand.Read(plain)
	enc := filepath.Join(dir, "f.age")
	if r := cli(t, data, bytes.NewReader(plain), "encrypt", "-o", enc); r.code != 0 {
		t.Fatalf("encrypt: %v", r)
	}
	full, _ := os.ReadFile(enc)
	if r := cli(t, data, bytes.NewReader(full), "decrypt"); r.code != 0 || r.stdout != string(plain) {
		t.Fatalf("decrypt of a whole file: exit %d, %d bytes, stderr %s", r.code, len(r.stdout), r.stderr)
	}
	out := filepath.Join(dir, "out")
	if r := cli(t, data, bytes.NewReader(full), "decrypt", "-o", out); r.code != 0 {
		t.Fatalf("decrypt -o: %v", r)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, plain) {
		t.Fatal("decrypt -o wrote something else")
	}
	os.Remove(out)

	altered := bytes.Clone(full)
	altered[len(altered)-100] ^= 1
	for name, bad := range map[string][]byte{
		"truncated":         full[:len(full)/2],
		"cut at a chunk":    full[:len(full)-len(full)%(64<<10)],
		"altered near end":  altered,
		"missing last byte": full[:len(full)-1],
	} {
		r := cli(t, data, bytes.NewReader(bad), "decrypt")
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "nothing was written") {
			t.Errorf("decrypt of a %s file: exit %d, %d bytes written, stderr %s", name, r.code, len(r.stdout), r.stderr)
		}
		r = cli(t, data, bytes.NewReader(bad), "decrypt", "-o", out)
		entries, _ := os.ReadDir(dir)
		if r.code != 1 || len(entries) != 1 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("decrypt -o of a %s file: exit %d, left %v", name, r.code, names)
		}
	}

	r := cli(t, data, bytes.NewReader(full), "decrypt", "--purpose", "other")
	if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, `does not open with this node's key for purpose "other"`) || !strings.Contains(r.stderr, "another node") {
		t.Errorf("decrypt with another purpose: %v", r)
	}

	r = cli(t, data, strings.NewReader("hello"), "encrypt", "--armor")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "-----BEGIN AGE ENCRYPTED FILE-----") {
		t.Fatalf("encrypt --armor: %v", r)
	}
	if r := cli(t, data, strings.NewReader(r.stdout), "decrypt"); r.code != 0 || r.stdout != "hello" {
		t.Errorf("decrypt of an armoured file: %v", r)
	}
}

// nodeDaemon is a fake daemon of node self in cluster c1 with members,
// whose key for a purpose is SHA-256(self, purpose).
func nodeDaemon(t *testing.T, self string, members ...string) string {
	t.Helper()
	st := node.Status{PeerID: self, ClusterID: "c1", Lock: "unlocked"}
	for _, m := range members {
		st.Members = append(st.Members, node.MemberInfo{PeerID: m, Status: "active", Voter: true})
	}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/status", reply(http.StatusOK, st))
	mux.HandleFunc("POST /v1/key", func(w http.ResponseWriter, r *http.Request) {
		var req node.KeyRequest
		json.NewDecoder(r.Body).Decode(&req)
		k := sha256.Sum256([]byte(self + "\x00" + req.Purpose))
		reply(http.StatusOK, node.KeyResponse{Purpose: req.Purpose, Key: k[:]})(w, r)
	})
	return fakeDaemon(t, mux)
}

// TestDecryptNamesNode: a file that does not open says which node and
// purpose it needs, from the tag encrypt puts in the scrypt salt: another
// member's file names that member; this node's file for another purpose
// names the purpose when it is the default, and says "another --purpose"
// otherwise.
func TestDecryptNamesNode(t *testing.T) {
	a, b := randID(t).String(), randID(t).String()
	da, db := nodeDaemon(t, a, a, b), nodeDaemon(t, b, a, b)
	enc := func(data string, args ...string) string {
		t.Helper()
		r := cli(t, data, strings.NewReader("secret"), append([]string{"encrypt"}, args...)...)
		if r.code != 0 {
			t.Fatalf("encrypt: %v", r)
		}
		return r.stdout
	}
	fromB := enc(db)
	fromA := enc(da)
	fromABackups := enc(da, "--purpose", "backups")
	if r := cli(t, da, strings.NewReader(fromA), "decrypt"); r.code != 0 || r.stdout != "secret" {
		t.Fatalf("decrypt of its own file: %v", r)
	}
	for _, tc := range []struct {
		file string
		args []string
		want string
	}{
		{fromB, nil, `it was made by node ` + b + ` for purpose "p2pkey/age/v1": decrypt it on that node, or with its recovery kit`},
		{fromABackups, nil, "it was made by this node with another --purpose"},
		{fromA, []string{"--purpose", "backups"}, `it was made by this node for purpose "p2pkey/age/v1": run decrypt with --purpose p2pkey/age/v1`},
	} {
		r := cli(t, da, strings.NewReader(tc.file), append([]string{"decrypt"}, tc.args...)...)
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr, "incorrect passphrase") {
			t.Errorf("decrypt %v: want exit 1 and %q; got %v", tc.args, tc.want, r)
		}
	}
}
