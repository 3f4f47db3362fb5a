package shares

import (
	"bytes"
	"crypto/rand"
	"errors"
	mrand "math/rand/v2"
	"testing"
)

func randomKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// pick returns the shares at idx.
func pick(all [][]byte, idx []int) [][]byte {
	out := make([][]byte, len(idx))
	for i, j := range idx {
		out[i] = all[j]
	}
	return out
}

func TestSplitCombineSizes(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(1, 2))
	for _, n := range []int{2, 3, 5, 15, 25} {
		thresholds := map[int]bool{2: true, n/2 + 1: true, n: true}
		for th := range thresholds {
			k := randomKey(t)
			all, err := Split(k, n, th)
			if err != nil {
				t.Fatalf("Split(n=%d, t=%d): %v", n, th, err)
			}
			if len(all) != n {
				t.Fatalf("Split(n=%d, t=%d): %d shares", n, th, len(all))
			}
			for size := 1; size <= n; size++ {
				for trial := 0; trial < 3; trial++ {
					idx := rng.Perm(n)[:size]
					got, err := Combine(pick(all, idx))
					if size >= th {
						if err != nil || !bytes.Equal(got, k) {
							t.Fatalf("n=%d t=%d: %d shares %v do not give K (err %v)", n, th, size, idx, err)
						}
					} else if err == nil && bytes.Equal(got, k) {
						t.Fatalf("n=%d t=%d: %d shares %v give K", n, th, size, idx)
					}
				}
			}
		}
	}
}

// TestSplitCombineAllSubsets tries every subset of 5 shares with t = 3.
func TestSplitCombineAllSubsets(t *testing.T) {
	k := randomKey(t)
	const n, th = 5, 3
	all, err := Split(k, n, th)
	if err != nil {
		t.Fatal(err)
	}
	for mask := 1; mask < 1<<n; mask++ {
		var idx []int
		for i := 0; i < n; i++ {
			if mask&(1<<i) != 0 {
				idx = append(idx, i)
			}
		}
		got, err := Combine(pick(all, idx))
		ok := err == nil && bytes.Equal(got, k)
		if ok != (len(idx) >= th) {
			t.Errorf("subset %v: gives K = %v (err %v)", idx, ok, err)
		}
	}
}

func TestSplitErrors(t *testing.T) {
	k := randomKey(t)
	for _, c := range []struct {
		name string
		k    []byte
		n, t int
		low  bool // ErrThresholdTooLow
	}{
		{"empty secret", nil, 3, 2, false},
		{"zero shares", k, 0, 1, true},
		{"too many shares", k, 256, 2, false},
		{"zero threshold", k, 3, 0, true},
		{"threshold above n", k, 3, 4, false},
		{"n=1 t=2", k, 1, 2, true},
	} {
		_, err := Split(c.k, c.n, c.t)
		if err == nil {
			t.Errorf("%s: Split(%d, %d) succeeded", c.name, c.n, c.t)
		}
		if errors.Is(err, ErrThresholdTooLow) != c.low {
			t.Errorf("%s: Split(%d, %d): %v; ErrThresholdTooLow expected: %v", c.name, c.n, c.t, err, c.low)
		}
	}
}

// TestNoThresholdOne: rule K1 forbids escrow below a threshold of 2. No
// split of one share, or of threshold 1, is made, and no share of such a
// split (K itself, as older versions made it) is sealed or combined.
func TestNoThresholdOne(t *testing.T) {
	k := randomKey(t)
	for _, c := range []struct{ n, t int }{{1, 1}, {2, 1}, {4, 1}, {255, 1}, {1, 0}, {-1, -1}} {
		parts, err := Split(k, c.n, c.t)
		if !errors.Is(err, ErrThresholdTooLow) || parts != nil {
			t.Errorf("Split(n=%d, t=%d) = %d shares, %v; want ErrThresholdTooLow", c.n, c.t, len(parts), err)
		}
	}
	// The smallest escrow there is: 2 of 2. Neither share alone is K.
	parts, err := Split(k, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range parts {
		if bytes.Contains(p, k) || bytes.Contains(p, k[:16]) || bytes.Contains(p, k[16:]) {
			t.Fatalf("share %d holds K", i)
		}
	}
	whole := append([]byte{schemeWhole}, k...)
	if _, err := Combine([][]byte{whole}); !errors.Is(err, ErrThresholdTooLow) {
		t.Errorf("Combine of a threshold-1 share: %v", err)
	}
	ownerKey, owner := newKey(t)
	_, holder := newKey(t)
	b := Binding{ClusterID: testCluster, Owner: owner, Generation: 1, Holder: holder, Split: NewSplitID()}
	if env, err := Seal(ownerKey, b, whole, nil); !errors.Is(err, ErrThresholdTooLow) || env != nil {
		t.Errorf("Seal of a threshold-1 share: %v", err)
	}
	// Nor is K sealed bare, whatever its first byte.
	for _, first := range []byte{0x00, schemeShamir, schemeWhole, 0xff} {
		kk := append([]byte{first}, k[1:]...)
		if _, err := Seal(ownerKey, b, kk, nil); err == nil && first != schemeShamir {
			t.Errorf("Seal accepted a bare key starting with %#x", first)
		}
	}
}

func TestCombineErrors(t *testing.T) {
	k := randomKey(t)
	sh, _ := Split(k, 3, 2)
	whole := [][]byte{append([]byte{schemeWhole}, k...)}
	other := [][]byte{append([]byte{schemeWhole}, randomKey(t)...)}
	for _, c := range []struct {
		name   string
		shares [][]byte
	}{
		{"none", nil},
		{"one shamir share", sh[:1]},
		{"duplicate", [][]byte{sh[0], sh[0]}},
		{"mixed schemes", [][]byte{sh[0], whole[0]}},
		{"threshold-1 shares", [][]byte{whole[0], whole[0]}},
		{"whole shares disagree", [][]byte{whole[0], other[0]}},
		{"too short", [][]byte{{schemeShamir}}},
		{"unknown scheme", [][]byte{append([]byte{0x7f}, sh[0][1:]...), append([]byte{0x7f}, sh[1][1:]...)}},
		{"different lengths", [][]byte{sh[0], sh[1][:10]}},
	} {
		if got, err := Combine(c.shares); err == nil {
			t.Errorf("%s: Combine succeeded with %x", c.name, got)
		}
	}
}
