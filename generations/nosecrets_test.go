package generations

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"math/rand"
	"testing"
	"time"

	"github.com/hashicorp/vault/shamir"
	"github.com/libp2p/go-libp2p/core/peer"
)

// TestLedgerHoldsNoShares builds a ledger from real Shamir shares of real
// keys, sealed into (fake) envelopes whose digests are recorded, and checks
// that no snapshot, and no log entry, contains any key, share or envelope,
// raw or in hex or base64.
func TestLedgerHoldsNoShares(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	h := newHarness(t)
	ks := keys(t, 5)
	ids := make([]peer.ID, len(ks))
	for i, k := range ks {
		ids[i] = k.id
	}
	h.must(NewBootstrap(testCluster, ids[0], h.tick()))
	for i := 1; i < len(ids); i++ {
		h.must(NewAddInvite(inviteHash(i), invitePub(i), h.now.Add(time.Hour), ids[0], h.tick()))
		h.must(NewConsumeInvite(inviteHash(i), ids[i], testCluster, time.Time{}, h.tick()))
	}
	var secrets [][]byte
	var snaps [][]byte
	for gen := uint64(1); gen <= 3; gen++ {
		h.must(NewOpenGeneration(h.now.Add(time.Hour), h.tick()))
		g, _ := h.l.Open()
		for _, o := range g.Members {
			key := make([]byte, 32)
			rng.Read(key)
			shares, err := shamir.Split(key, len(g.Members), g.Threshold)
			if err != nil {
				t.Fatal(err)
			}
			secrets = append(secrets, key)
			var rs []Receipt
			for i, hd := range g.Members {
				// A fake seal: random bytes standing in for the AEAD
				// ciphertext, with the share appended so the envelope
				// really carries it.
				env := make([]byte, 48)
				rng.Read(env)
				env = append(env, shares[i]...)
				secrets = append(secrets, shares[i], env)
				d := sha256.Sum256(env)
				rs = append(rs, signed(t, testCluster, g.Number, o, hd, d[:]))
			}
			h.must(NewRecordReceipts(rs, h.tick()))
			snap, err := h.l.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			snaps = append(snaps, snap)
		}
		if cur, _ := h.l.Current(); cur.Number != gen {
			t.Fatalf("generation %d did not commit", gen)
		}
	}
	haystacks := snaps
	for _, e := range h.log {
		haystacks = append(haystacks, e.cmd)
	}
	for _, s := range secrets {
		needles := [][]byte{s, []byte(hex.EncodeToString(s)), []byte(base64.StdEncoding.EncodeToString(s))}
		if len(s) > 16 {
			// Any 16-byte window of a secret is already too much.
			needles = append(needles, s[:16], s[len(s)-16:])
		}
		for _, hay := range haystacks {
			for _, n := range needles {
				if bytes.Contains(hay, n) {
					t.Fatalf("ledger bytes contain secret material %x", n)
				}
			}
		}
	}
}
