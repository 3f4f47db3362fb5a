//go:build linux

package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCryptsetupVolume(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string // "" means an error
	}{
		{&net.UnixAddr{Name: "@c0ffee/cryptsetup/data", Net: "unix"}, "data"},
		{&net.UnixAddr{Name: "\x00c0ffee/cryptsetup/home-1", Net: "unix"}, "home-1"},
		{&net.UnixAddr{Name: "@1/cryptsetup/luks-5d0b9c1e-7f", Net: "unix"}, "luks-5d0b9c1e-7f"},
		{&net.UnixAddr{Name: "@c0ffee/cryptsetup/", Net: "unix"}, ""},
		{&net.UnixAddr{Name: "@/cryptsetup/data", Net: "unix"}, ""},
		{&net.UnixAddr{Name: "@c0ffee/cryptsetup/a/b", Net: "unix"}, ""},
		{&net.UnixAddr{Name: "@c0ffee/cryptsetup/a b", Net: "unix"}, ""},
		{&net.UnixAddr{Name: "@x/y/cryptsetup/data", Net: "unix"}, ""},
		{&net.UnixAddr{Name: "/tmp/c0ffee/cryptsetup/data", Net: "unix"}, ""},
		{&net.UnixAddr{Name: "@c0ffee/cryptsetup/" + strings.Repeat("v", 129), Net: "unix"}, ""},
		{&net.UnixAddr{Name: "", Net: "unix"}, ""},
		{&net.TCPAddr{}, ""},
		{nil, ""},
	} {
		got, err := CryptsetupVolume(tc.addr)
		if (err == nil) != (tc.want != "") || got != tc.want {
			t.Errorf("%v: %q, %v; want %q", tc.addr, got, err, tc.want)
		}
	}
}

// TestCryptsetupVolumeFromSystemd: the real systemd-cryptsetup, given a
// socket as the key file, connects from an address CryptsetupVolume reads
// its volume name from, and reads the key the server writes.
func TestCryptsetupVolumeFromSystemd(t *testing.T) {
	const sdc = "/lib/systemd/systemd-cryptsetup"
	if _, err := os.Stat(sdc); err != nil {
		t.Skip("systemd-cryptsetup is not installed")
	}
	if os.Geteuid() != 0 {
		t.Skip("systemd-cryptsetup needs root")
	}
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		t.Skip("cryptsetup is not installed (to format a volume)")
	}
	dir := shortTempDir(t)
	img := filepath.Join(dir, "img")
	os.WriteFile(img, nil, 0o600)
	os.Truncate(img, 20<<20)
	format := exec.Command("cryptsetup", "luksFormat", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--batch-mode", "--key-file", "-", img)
	format.Stdin = strings.NewReader("passphrase")
	if out, err := format.CombinedOutput(); err != nil {
		t.Fatalf("luksFormat: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "k")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		v, err := CryptsetupVolume(c.RemoteAddr())
		if err != nil {
			got <- fmt.Sprintf("%v (address %q)", err, c.RemoteAddr())
			return
		}
		c.Write([]byte("passphrase"))
		got <- "volume " + v
	}()
	cmd := exec.Command(sdc, "attach", "p2pkey-test-vol", img, sock, "luks,headless")
	out, _ := cmd.CombinedOutput() // without device-mapper it cannot activate
	select {
	case g := <-got:
		if g != "volume p2pkey-test-vol" {
			t.Fatalf("systemd-cryptsetup's connection: %s\n%s", g, out)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("systemd-cryptsetup never connected to the key socket:\n%s", out)
	}
}

// luksDial connects as systemd-cryptsetup does and reads to EOF.
func luksDial(t *testing.T, path, volume string) ([]byte, error) {
	t.Helper()
	var laddr *net.UnixAddr
	if volume != "" {
		laddr = &net.UnixAddr{Name: fmt.Sprintf("@%d/cryptsetup/%s", time.Now().UnixNano(), volume), Net: "unix"}
	}
	c, err := net.DialUnix("unix", laddr, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	return io.ReadAll(c)
}

// TestServeLUKS: an unlocked node writes the volume's key and closes; a
// peer not bound to cryptsetup's address gets nothing; a locked node waits
// the configured time and closes with nothing; the socket goes with Close.
func TestServeLUKS(t *testing.T) {
	nodes := testCluster(t, 2)
	waitUnlocked(t, nodes...)
	n := nodes[1]
	me := uint32(os.Getuid())
	path := filepath.Join(shortTempDir(t), "run", "luks.sock")
	s, err := n.ServeLUKS(LUKSConfig{Path: path, AllowUIDs: []uint32{me}})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o666 {
		t.Fatalf("LUKS socket with another allowed uid: %v %v, want a 0666 socket", fi, err)
	}
	want, err := n.Key(ctxT(t, 5*time.Second), "luks/data", false)
	if err != nil {
		t.Fatal(err)
	}
	got, err := luksDial(t, path, "data")
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("volume data: %x, %v; want %x", got, err, want)
	}
	if got, err := luksDial(t, path, ""); err != nil || len(got) != 0 {
		t.Fatalf("unbound peer: %x, %v; want nothing", got, err)
	}
	if _, err := n.ServeLUKS(LUKSConfig{Path: path}); err == nil {
		t.Fatal("a second LUKS socket replaced a live one")
	}
	s.Close()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}

	// A lone node is unescrowed: it never releases a key, so the request
	// waits and closes empty.
	cfg := testConfig(t)
	cfg.Bootstrap = true
	lone := startNode(t, cfg)
	path2 := filepath.Join(shortTempDir(t), "luks.sock")
	if _, err := lone.ServeLUKS(LUKSConfig{Path: path2, AllowUIDs: []uint32{me}, Wait: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if got, err := luksDial(t, path2, "data"); err != nil || len(got) != 0 {
		t.Fatalf("locked node: %x, %v; want nothing", got, err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("locked node closed after %v, before its wait", d)
	}
	// The node's Close takes the socket with it.
	lone.Close()
	waitFor(t, "the socket to go with the node", 5*time.Second, func() bool {
		_, err := os.Lstat(path2)
		return errors.Is(err, fs.ErrNotExist)
	})
}
