package shares

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

const testCluster = "0123456789abcdef0123456789abcdef"

func newKey(t testing.TB) (crypto.PrivKey, peer.ID) {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return priv, id
}

func TestSealOpenRoundTrip(t *testing.T) {
	ownerKey, owner := newKey(t)
	_, holder := newKey(t)
	b := Binding{ClusterID: testCluster, Owner: owner, Generation: 7, Holder: holder}
	share := []byte("a share of the node key, 34 bytes!")
	env, err := Seal(ownerKey, b, share, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(env.Ciphertext, share) {
		t.Fatal("ciphertext contains the share")
	}
	got, gotB, err := Open(ownerKey, env)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, share) || gotB != b {
		t.Fatalf("Open = %q, %+v", got, gotB)
	}

	// Through the encoding too.
	raw, err := env.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	env2, err := ParseEnvelope(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := Open(ownerKey, env2); err != nil || !bytes.Equal(got, share) {
		t.Fatalf("Open(parsed) = %q, %v", got, err)
	}
	if Digest(env) != Digest(env2) || Digest(env) == ([32]byte{}) {
		t.Fatal("digest changes through the encoding")
	}
	// Two seals of the same share differ (random nonce).
	env3, _ := Seal(ownerKey, b, share, nil)
	if Digest(env3) == Digest(env) {
		t.Fatal("two seals have the same digest")
	}
}

func TestOpenRefusesTampering(t *testing.T) {
	ownerKey, owner := newKey(t)
	_, holder := newKey(t)
	_, other := newKey(t)
	b := Binding{ClusterID: testCluster, Owner: owner, Generation: 7, Holder: holder}
	env, err := Seal(ownerKey, b, []byte("share"), nil)
	if err != nil {
		t.Fatal(err)
	}
	clone := func() *Envelope {
		c := *env
		c.Nonce = bytes.Clone(env.Nonce)
		c.Ciphertext = bytes.Clone(env.Ciphertext)
		return &c
	}
	for name, mutate := range map[string]func(e *Envelope){
		"cluster":    func(e *Envelope) { e.Binding.ClusterID = "fedcba9876543210fedcba9876543210" },
		"generation": func(e *Envelope) { e.Binding.Generation = 8 },
		"holder":     func(e *Envelope) { e.Binding.Holder = other },
		"owner":      func(e *Envelope) { e.Binding.Owner = other },
		"version":    func(e *Envelope) { e.Version = 2 },
	} {
		e := clone()
		mutate(e)
		if _, _, err := Open(ownerKey, e); err == nil {
			t.Errorf("%s changed: Open succeeded", name)
		}
	}
	for i := range env.Nonce {
		e := clone()
		e.Nonce[i] ^= 0x01
		if _, _, err := Open(ownerKey, e); !errors.Is(err, ErrOpenFailed) {
			t.Errorf("nonce byte %d flipped: err %v", i, err)
		}
	}
	for i := range env.Ciphertext {
		e := clone()
		e.Ciphertext[i] ^= 0x80
		if _, _, err := Open(ownerKey, e); !errors.Is(err, ErrOpenFailed) {
			t.Errorf("ciphertext byte %d flipped: err %v", i, err)
		}
	}
	// Every bit of the encoding: either it does not parse, or it does not
	// open.
	raw, _ := env.MarshalBinary()
	for i := range raw {
		for bit := 0; bit < 8; bit++ {
			m := bytes.Clone(raw)
			m[i] ^= 1 << bit
			e, err := ParseEnvelope(m)
			if err != nil {
				continue
			}
			if _, _, err := Open(ownerKey, e); err == nil {
				t.Fatalf("byte %d bit %d flipped: envelope still opens", i, bit)
			}
		}
	}
}

func TestHolderCannotOpen(t *testing.T) {
	ownerKey, owner := newKey(t)
	holderKey, holder := newKey(t)
	env, err := Seal(ownerKey, Binding{ClusterID: testCluster, Owner: owner, Generation: 1, Holder: holder}, []byte("share"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Open(holderKey, env); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("holder Open: %v, want ErrNotOwner", err)
	}
	// Claiming the envelope as its own does not help: the key differs.
	e := *env
	e.Binding.Owner = holder
	if _, _, err := Open(holderKey, &e); !errors.Is(err, ErrOpenFailed) {
		t.Fatalf("holder Open of relabelled envelope: %v, want ErrOpenFailed", err)
	}
}

func TestSealErrors(t *testing.T) {
	ownerKey, owner := newKey(t)
	_, holder := newKey(t)
	good := Binding{ClusterID: testCluster, Owner: owner, Generation: 1, Holder: holder}
	secp, _, _ := crypto.GenerateSecp256k1Key(rand.Reader)
	secpID, _ := peer.IDFromPrivateKey(secp)
	for name, c := range map[string]struct {
		key   crypto.PrivKey
		b     Binding
		share []byte
		want  error
	}{
		"not the owner":  {ownerKey, Binding{ClusterID: testCluster, Owner: holder, Generation: 1, Holder: holder}, []byte("s"), ErrNotOwner},
		"no cluster":     {ownerKey, Binding{Owner: owner, Holder: holder}, []byte("s"), ErrInvalidEnvelope},
		"bad holder":     {ownerKey, Binding{ClusterID: testCluster, Owner: owner, Holder: "junk"}, []byte("s"), ErrInvalidEnvelope},
		"empty share":    {ownerKey, good, nil, ErrInvalidEnvelope},
		"huge share":     {ownerKey, good, make([]byte, MaxShareSize+1), ErrInvalidEnvelope},
		"secp256k1 key":  {secp, Binding{ClusterID: testCluster, Owner: secpID, Holder: holder}, []byte("s"), ErrKeyType},
		"bad cluster id": {ownerKey, Binding{ClusterID: "\xff", Owner: owner, Holder: holder}, []byte("s"), ErrInvalidEnvelope},
	} {
		if _, err := Seal(c.key, c.b, c.share, nil); !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", name, err, c.want)
		}
	}
}

func TestParseEnvelopeRefusesNonCanonical(t *testing.T) {
	ownerKey, owner := newKey(t)
	_, holder := newKey(t)
	env, _ := Seal(ownerKey, Binding{ClusterID: testCluster, Owner: owner, Generation: 1, Holder: holder}, []byte("s"), nil)
	raw, _ := env.MarshalBinary()
	// An unknown field appended still decodes with protobuf, but is not
	// the canonical encoding, and would change the digest.
	if _, err := ParseEnvelope(append(bytes.Clone(raw), 0x40, 0x01)); !errors.Is(err, ErrInvalidEnvelope) {
		t.Fatalf("unknown field: %v", err)
	}
	if _, err := ParseEnvelope(make([]byte, MaxEnvelopeSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
}

func TestReceipt(t *testing.T) {
	_, owner := newKey(t)
	holderKey, holder := newKey(t)
	d := [32]byte{1, 2, 3}
	sig, err := SignReceipt(holderKey, testCluster, 4, owner, d)
	if err != nil {
		t.Fatal(err)
	}
	r := &Receipt{Generation: 4, Owner: owner, Holder: holder, Digest: d, Signature: sig}
	if err := r.Verify(testCluster); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]func(r *Receipt) string{
		"generation": func(r *Receipt) string { r.Generation++; return testCluster },
		"owner":      func(r *Receipt) string { r.Owner = holder; return testCluster },
		"holder":     func(r *Receipt) string { r.Holder = owner; return testCluster },
		"digest":     func(r *Receipt) string { r.Digest[0]++; return testCluster },
		"signature":  func(r *Receipt) string { r.Signature = bytes.Clone(sig); r.Signature[0]++; return testCluster },
		"cluster":    func(r *Receipt) string { return "another" },
	} {
		c := *r
		cluster := bad(&c)
		if err := c.Verify(cluster); !errors.Is(err, ErrBadReceipt) {
			t.Errorf("%s changed: %v", name, err)
		}
	}
	if _, err := SignReceipt(holderKey, testCluster, 4, owner, [32]byte{}); err == nil {
		t.Error("signed a zero digest")
	}
}
