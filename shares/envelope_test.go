package shares

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/internal/testkit"
	"github.com/p2pkey/p2pkey/shares/pb"
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
	b := Binding{ClusterID: testCluster, Owner: owner, Generation: 7, Holder: holder, Split: NewSplitID()}
	share := shareOf([]byte("a share of the node key, 34 bytes!"))
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
	if env.Binding.Split != b.Split || env.Version != EnvelopeVersion {
		t.Fatalf("envelope names split %x, version %d", env.Binding.Split, env.Version)
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
	if got, gotB, err := Open(ownerKey, env2); err != nil || !bytes.Equal(got, share) || gotB.Split != b.Split {
		t.Fatalf("Open(parsed) = %q, %+v, %v", got, gotB, err)
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
	b := Binding{ClusterID: testCluster, Owner: owner, Generation: 7, Holder: holder, Split: testSplit}
	env, err := Seal(ownerKey, b, shareOf([]byte("share")), nil)
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
		"split":      func(e *Envelope) { e.Binding.Split[3] ^= 0x10 },
		"new split":  func(e *Envelope) { e.Binding.Split = NewSplitID() },
		"zero split": func(e *Envelope) { e.Binding.Split = [16]byte{} },
		"version 1":  func(e *Envelope) { e.Version = 1 },
		"version 3":  func(e *Envelope) { e.Version = 3 },
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
	env, err := Seal(ownerKey, Binding{ClusterID: testCluster, Owner: owner, Generation: 1, Holder: holder, Split: testSplit}, shareOf([]byte("share")), nil)
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
	sp := NewSplitID()
	good := Binding{ClusterID: testCluster, Owner: owner, Generation: 1, Holder: holder, Split: sp}
	noSplit := good
	noSplit.Split = [16]byte{}
	secp, _, _ := crypto.GenerateSecp256k1Key(rand.Reader)
	secpID, _ := peer.IDFromPrivateKey(secp)
	s := shareOf([]byte("s"))
	parts, err := Split(randomKey(t), 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	whole := append([]byte{schemeWhole}, randomKey(t)...) // what a threshold-1 split used to make
	for name, c := range map[string]struct {
		key   crypto.PrivKey
		b     Binding
		share []byte
		want  error
	}{
		"not the owner":   {ownerKey, Binding{ClusterID: testCluster, Owner: holder, Generation: 1, Holder: holder, Split: sp}, s, ErrNotOwner},
		"no cluster":      {ownerKey, Binding{Owner: owner, Holder: holder, Split: sp}, s, ErrInvalidEnvelope},
		"bad holder":      {ownerKey, Binding{ClusterID: testCluster, Owner: owner, Holder: "junk", Split: sp}, s, ErrInvalidEnvelope},
		"zero split":      {ownerKey, noSplit, parts[0], ErrZeroSplit},
		"zero split (2)":  {ownerKey, noSplit, parts[0], ErrInvalidEnvelope},
		"empty share":     {ownerKey, good, nil, ErrInvalidEnvelope},
		"huge share":      {ownerKey, good, make([]byte, MaxShareSize+1), ErrInvalidEnvelope},
		"not a share":     {ownerKey, good, []byte("plain bytes"), ErrInvalidEnvelope},
		"too short share": {ownerKey, good, []byte{schemeShamir, 7}, ErrInvalidEnvelope},
		"threshold-1":     {ownerKey, good, whole, ErrThresholdTooLow},
		"secp256k1 key":   {secp, Binding{ClusterID: testCluster, Owner: secpID, Holder: holder, Split: sp}, s, ErrKeyType},
		"bad cluster id":  {ownerKey, Binding{ClusterID: "\xff", Owner: owner, Holder: holder, Split: sp}, s, ErrInvalidEnvelope},
	} {
		if _, err := Seal(c.key, c.b, c.share, nil); !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", name, err, c.want)
		}
	}
	if _, err := Seal(ownerKey, good, parts[1], nil); err != nil {
		t.Errorf("a share from Split: %v", err)
	}
}

func TestNewSplitID(t *testing.T) {
	seen := map[[16]byte]bool{}
	for range 1000 {
		id := NewSplitID()
		if id == ([16]byte{}) || seen[id] {
			t.Fatalf("NewSplitID gave %x twice or zero", id)
		}
		seen[id] = true
	}
}

func TestParseEnvelopeRefusesNonCanonical(t *testing.T) {
	ownerKey, owner := newKey(t)
	_, holder := newKey(t)
	env, _ := Seal(ownerKey, Binding{ClusterID: testCluster, Owner: owner, Generation: 1, Holder: holder, Split: testSplit}, shareOf([]byte("s")), nil)
	raw, _ := env.MarshalBinary()
	if _, err := ParseEnvelope(raw); err != nil {
		t.Fatal(err)
	}
	// An unknown field appended still decodes with protobuf, but is not
	// the canonical encoding, and would change the digest.
	if _, err := ParseEnvelope(append(bytes.Clone(raw), 0x48, 0x01)); !errors.Is(err, ErrInvalidEnvelope) {
		t.Fatalf("unknown field: %v", err)
	}
	// The split field repeated: protobuf keeps the last one, but the
	// encoding is not canonical.
	again := append(bytes.Clone(raw), 0x42, 16)
	again = append(again, testSplit[:]...)
	if _, err := ParseEnvelope(again); !errors.Is(err, ErrInvalidEnvelope) {
		t.Fatalf("repeated split: %v", err)
	}
	if _, err := ParseEnvelope(make([]byte, MaxEnvelopeSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
	m := &pb.Envelope{}
	if err := proto.Unmarshal(raw, m); err != nil {
		t.Fatal(err)
	}
	enc := func(f func(m *pb.Envelope)) []byte {
		c := proto.Clone(m).(*pb.Envelope)
		f(c)
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for name, c := range map[string]struct {
		data []byte
		want error
	}{
		"no split":       {enc(func(m *pb.Envelope) { m.Split = nil }), ErrInvalidEnvelope},
		"zero split":     {enc(func(m *pb.Envelope) { m.Split = make([]byte, 16) }), ErrZeroSplit},
		"15-byte split":  {enc(func(m *pb.Envelope) { m.Split = m.Split[:15] }), ErrInvalidEnvelope},
		"17-byte split":  {enc(func(m *pb.Envelope) { m.Split = append(bytes.Clone(m.Split), 1) }), ErrInvalidEnvelope},
		"version 1":      {enc(func(m *pb.Envelope) { m.Version = 1; m.Split = nil }), ErrEnvelopeVersion},
		"version 1 (+s)": {enc(func(m *pb.Envelope) { m.Version = 1 }), ErrEnvelopeVersion},
		"version 0":      {enc(func(m *pb.Envelope) { m.Version = 0 }), ErrEnvelopeVersion},
		"version 3":      {enc(func(m *pb.Envelope) { m.Version = 3 }), ErrEnvelopeVersion},
	} {
		if _, err := ParseEnvelope(c.data); !errors.Is(err, c.want) || !errors.Is(err, ErrInvalidEnvelope) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	// The refusal of a version 1 envelope says why.
	_, err := ParseEnvelope(enc(func(m *pb.Envelope) { m.Version = 1; m.Split = nil }))
	if err == nil || !testkit.ErrorSays(err, "version 1 names no split") {
		t.Errorf("version 1 refusal: %v", err)
	}
}

func TestReceipt(t *testing.T) {
	_, owner := newKey(t)
	holderKey, holder := newKey(t)
	d := [32]byte{1, 2, 3}
	sp := NewSplitID()
	sig, err := SignReceipt(holderKey, testCluster, 4, owner, sp, d)
	if err != nil {
		t.Fatal(err)
	}
	r := &Receipt{Generation: 4, Owner: owner, Holder: holder, Split: sp, Digest: d, Signature: sig}
	if err := r.Verify(testCluster); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]func(r *Receipt) string{
		"generation": func(r *Receipt) string { r.Generation++; return testCluster },
		"owner":      func(r *Receipt) string { r.Owner = holder; return testCluster },
		"holder":     func(r *Receipt) string { r.Holder = owner; return testCluster },
		"digest":     func(r *Receipt) string { r.Digest[0]++; return testCluster },
		"split":      func(r *Receipt) string { r.Split[0]++; return testCluster },
		"zero split": func(r *Receipt) string { r.Split = [16]byte{}; return testCluster },
		"signature":  func(r *Receipt) string { r.Signature = bytes.Clone(sig); r.Signature[0]++; return testCluster },
		"cluster":    func(r *Receipt) string { return "another" },
	} {
		c := *r
		cluster := bad(&c)
		if err := c.Verify(cluster); !errors.Is(err, ErrBadReceipt) {
			t.Errorf("%s changed: %v", name, err)
		}
	}
	if _, err := SignReceipt(holderKey, testCluster, 4, owner, sp, [32]byte{}); err == nil {
		t.Error("signed a zero digest")
	}
	if _, err := SignReceipt(holderKey, testCluster, 4, owner, [16]byte{}, d); !errors.Is(err, ErrZeroSplit) {
		t.Errorf("signed a zero split: %v", err)
	}
	// The signature is over generations.ReceiptMessage with the split.
	if !holder.MatchesPrivateKey(holderKey) {
		t.Fatal("holder ID")
	}
	ok, err := holderKey.GetPublic().Verify(generations.ReceiptMessage(testCluster, 4, owner, holder, sp, d[:]), sig)
	if err != nil || !ok {
		t.Errorf("receipt does not verify against generations.ReceiptMessage: %v", err)
	}
}
