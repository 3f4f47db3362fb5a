package shares

import (
	"bytes"
	"crypto/rand"
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
	for _, n := range []int{1, 2, 3, 5, 15, 25} {
		thresholds := map[int]bool{1: true, n/2 + 1: true, n: true}
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
	}{
		{"empty secret", nil, 3, 2},
		{"zero shares", k, 0, 1},
		{"too many shares", k, 256, 2},
		{"zero threshold", k, 3, 0},
		{"threshold above n", k, 3, 4},
		{"n=1 t=2", k, 1, 2},
	} {
		if _, err := Split(c.k, c.n, c.t); err == nil {
			t.Errorf("%s: Split(%d, %d) succeeded", c.name, c.n, c.t)
		}
	}
}

func TestCombineErrors(t *testing.T) {
	k := randomKey(t)
	sh, _ := Split(k, 3, 2)
	whole, _ := Split(k, 2, 1)
	other, _ := Split(randomKey(t), 2, 1)
	for _, c := range []struct {
		name   string
		shares [][]byte
	}{
		{"none", nil},
		{"one shamir share", sh[:1]},
		{"duplicate", [][]byte{sh[0], sh[0]}},
		{"mixed schemes", [][]byte{sh[0], whole[0]}},
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

func TestSplitThresholdOne(t *testing.T) {
	k := randomKey(t)
	for _, n := range []int{1, 4} {
		all, err := Split(k, n, 1)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range all {
			got, err := Combine([][]byte{s})
			if err != nil || !bytes.Equal(got, k) {
				t.Fatalf("n=%d: share %d alone does not give K (err %v)", n, i, err)
			}
		}
	}
}
