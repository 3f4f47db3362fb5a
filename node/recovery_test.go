//go:build unix

package node

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/p2pkey/p2pkey/generations"
	"golang.org/x/crypto/ssh"
)

// TestRecoveryKit: a kit made by an unlocked node opens with its identity
// (an age X25519 key, or an SSH key) and derives exactly the node's keys;
// the node's disk holds neither K nor the kit, only a record that says a
// kit exists for the current key; another identity, a tampered kit, or a
// locked node get nothing.
func TestRecoveryKit(t *testing.T) {
	nodes := testCluster(t, 2)
	waitUnlocked(t, nodes...)
	n := nodes[1]
	// A joiner is unlocked from its start; its key check reaches the ledger
	// once its generation has committed.
	waitFor(t, "the joiner's key check in the ledger", 30*time.Second, func() bool {
		var ok bool
		n.view(func(l *generations.Ledger) { _, ok = l.KeyCheck(n.ID()) })
		return ok
	})
	if n.RecoveryKitStatus() != nil {
		t.Fatal("a kit status before any kit was made")
	}
	if s := n.LockSummary(); s != "unlocked" && !strings.HasPrefix(s, "unlocked (generation ") {
		t.Fatalf("lock summary of an unlocked node: %q", s)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	sshPub, sshPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ssh.NewPublicKey(sshPub)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(sshPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	recipients := []string{id.Recipient().String(), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))}

	for _, bad := range [][]string{nil, {"age-passphrase"}, {"AGE-SECRET-KEY-1" + strings.Repeat("Q", 58)}} {
		if _, _, err := n.MakeRecoveryKit(bad); err == nil {
			t.Fatalf("kit made for recipients %q", bad)
		}
	}
	kit, info, err := n.MakeRecoveryKit(recipients)
	if err != nil {
		t.Fatal(err)
	}
	if info.PeerID != n.ID().String() || info.ClusterID != n.ClusterID() || info.Generation == 0 || len(info.Recipients) != 2 {
		t.Fatalf("kit info %+v", info)
	}
	st := n.RecoveryKitStatus()
	if st == nil || !st.CurrentKey || st.Generation != info.Generation {
		t.Fatalf("kit status %+v", st)
	}

	// Neither K nor the kit is on the node's disk.
	k := n.keys.get()
	defer clear(k)
	filepath.WalkDir(n.cfg.DataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		data, _ := os.ReadFile(path)
		for _, secret := range [][]byte{k, []byte(hex.EncodeToString(k)), kit} {
			if bytes.Contains(data, secret) {
				t.Errorf("%s holds K or the kit", path)
			}
		}
		return nil
	})

	sshIDs, err := ParseRecoveryIdentities(pem.EncodeToMemory(block))
	if err != nil {
		t.Fatal(err)
	}
	ageIDs, err := ParseRecoveryIdentities([]byte("# comment\n" + id.String() + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	for name, ids := range map[string][]age.Identity{"age": ageIDs, "ssh": sshIDs} {
		opened, err := OpenRecoveryKit(bytes.NewReader(kit), ids...)
		if err != nil {
			t.Fatalf("%s identity: %v", name, err)
		}
		if opened.PeerID != n.ID() || opened.ClusterID != n.ClusterID() || opened.Generation != info.Generation || !opened.CreatedAt.Equal(info.CreatedAt) {
			t.Fatalf("%s identity: kit for %s/%s gen %d", name, opened.PeerID, opened.ClusterID, opened.Generation)
		}
		for _, p := range []string{"default", "luks/data", "p2pkey/age/v1"} {
			want, err := n.Key(ctxT(t, 5*time.Second), p, false)
			if err != nil {
				t.Fatal(err)
			}
			got, err := opened.DeriveKey(p)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s identity, purpose %s: %x, %v; want %x", name, p, got, err, want)
			}
		}
		opened.Wipe()
		if _, err := opened.DeriveKey("default"); err == nil {
			t.Fatal("a wiped kit derived a key")
		}
	}

	other, _ := age.GenerateX25519Identity()
	if _, err := OpenRecoveryKit(bytes.NewReader(kit), other); !errors.Is(err, ErrRecoveryKit) {
		t.Fatalf("another identity: %v", err)
	}
	if _, err := OpenRecoveryKit(strings.NewReader("not a kit"), id); !errors.Is(err, ErrRecoveryKit) {
		t.Fatalf("garbage: %v", err)
	}
}

// TestParseRecoveryKit: the plaintext parser takes a well-formed kit and
// refuses a corrupt key, a wrong binding, and malformed input.
func TestParseRecoveryKit(t *testing.T) {
	k := bytes.Repeat([]byte{7}, KeySize)
	owner := randPeer(t)
	good := func(cluster, key string, check []byte) string {
		return recoveryKitMagic + "\ncluster: " + cluster + "\npeer: " + owner.String() + "\ngeneration: 3\ncreated: 2026-01-02T03:04:05Z\nkey-check: " +
			hex.EncodeToString(check) + "\nkey: " + key + "\n"
	}
	check := keyCheck(k, "c1", owner)
	kit, err := parseRecoveryKit([]byte(good("c1", hex.EncodeToString(k), check)))
	if err != nil {
		t.Fatal(err)
	}
	if kit.Generation != 3 || kit.PeerID != owner || kit.ClusterID != "c1" {
		t.Fatalf("parsed %+v", kit)
	}
	flipped := bytes.Clone(k)
	flipped[0] ^= 1
	for name, text := range map[string]string{
		"corrupt key":       good("c1", hex.EncodeToString(flipped), check),
		"other cluster":     good("c2", hex.EncodeToString(k), check),
		"short key":         good("c1", hex.EncodeToString(k[:31]), check),
		"non-hex key":       good("c1", strings.Repeat("zz", 32), check),
		"unknown version":   strings.Replace(good("c1", hex.EncodeToString(k), check), "v1", "v9", 1),
		"missing field":     strings.Replace(good("c1", hex.EncodeToString(k), check), "generation: 3\n", "", 1),
		"duplicated field":  good("c1", hex.EncodeToString(k), check) + "key: " + hex.EncodeToString(k) + "\n",
		"malformed line":    good("c1", hex.EncodeToString(k), check) + "junk\n",
		"empty":             "",
		"bad peer":          strings.Replace(good("c1", hex.EncodeToString(k), check), owner.String(), "nobody", 1),
		"bad generation":    strings.Replace(good("c1", hex.EncodeToString(k), check), "generation: 3", "generation: -3", 1),
		"bad creation time": strings.Replace(good("c1", hex.EncodeToString(k), check), "2026-01-02T03:04:05Z", "yesterday", 1),
	} {
		if _, err := parseRecoveryKit([]byte(text)); !errors.Is(err, ErrRecoveryKit) {
			t.Errorf("%s: %v, want ErrRecoveryKit", name, err)
		}
	}
}

// TestRecoveryKitLocked: an unescrowed node makes no kit.
func TestRecoveryKitLocked(t *testing.T) {
	cfg := testConfig(t)
	cfg.Bootstrap = true
	n := startNode(t, cfg)
	id, _ := age.GenerateX25519Identity()
	if _, _, err := n.MakeRecoveryKit([]string{id.Recipient().String()}); !errors.Is(err, ErrLocked) {
		t.Fatalf("unescrowed node made a kit: %v", err)
	}
	if s := n.LockSummary(); !strings.HasPrefix(s, "unescrowed: ") {
		t.Fatalf("lock summary of a lone node: %q", s)
	}
	if n.RecoveryKitStatus() != nil {
		t.Fatal("a refused kit was recorded")
	}
}
