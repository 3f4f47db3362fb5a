package shares

import (
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/hashicorp/vault/shamir"
)

// Share encodings. The first byte of every share names its scheme, so a
// share always says how to combine it (rule S6).
const (
	// schemeShamir: the rest is a hashicorp/vault/shamir part
	// (len(K)+1 bytes, the last one being the x coordinate).
	schemeShamir byte = 0x01
	// schemeWhole: the rest is K itself. Used when the threshold is 1
	// (including a one-member generation): any single share unlocks, so a
	// polynomial of degree 0 is K, and each share is simply K. The share is
	// never on the wire or on disk in clear; only inside an envelope.
	schemeWhole byte = 0x02
)

// MaxShares is the largest number of shares Split makes (shamir's x
// coordinates are the non-zero bytes).
const MaxShares = 255

// Split splits the secret k into n shares, any t of which give k back.
//
//   - 2 ≤ t ≤ n: Shamir's Secret Sharing over GF(2^8), with
//     hashicorp/vault/shamir.
//   - t == 1 (always the case when n == 1): shamir refuses a threshold of
//     one, and a degree-0 polynomial is the secret itself, so every share is
//     k, tagged as such. Its protection is the envelope alone.
//
// Each share starts with a scheme byte. Split does not keep or zero k; the
// caller owns it.
func Split(k []byte, n, t int) ([][]byte, error) {
	switch {
	case len(k) == 0:
		return nil, errors.New("shares: split: empty secret")
	case n < 1 || n > MaxShares:
		return nil, fmt.Errorf("shares: split: %d shares, want 1 to %d", n, MaxShares)
	case t < 1 || t > n:
		return nil, fmt.Errorf("shares: split: threshold %d, want 1 to n=%d", t, n)
	}
	out := make([][]byte, n)
	if t == 1 {
		for i := range out {
			out[i] = append([]byte{schemeWhole}, k...)
		}
		return out, nil
	}
	parts, err := shamir.Split(k, n, t)
	if err != nil {
		return nil, fmt.Errorf("shares: split: %w", err)
	}
	for i, p := range parts {
		out[i] = append([]byte{schemeShamir}, p...)
		clear(p)
	}
	return out, nil
}

// Combine returns the secret from shares made by one Split. With Shamir
// shares it needs at least two, and it cannot tell whether it got at least
// the threshold: fewer than t shares give a wrong secret without an error.
// That is why the node checks a reconstructed K against its key-check value
// (rule K4). Combine refuses duplicate, mixed-scheme, or mismatched shares.
// The caller should clear the result after use.
func Combine(shares [][]byte) ([]byte, error) {
	if len(shares) == 0 {
		return nil, errors.New("shares: combine: no shares")
	}
	scheme := byte(0)
	for i, s := range shares {
		if len(s) < 2 {
			return nil, fmt.Errorf("shares: combine: share %d is too short", i)
		}
		if i == 0 {
			scheme = s[0]
		} else if s[0] != scheme {
			return nil, errors.New("shares: combine: shares of different schemes")
		}
	}
	switch scheme {
	case schemeWhole:
		first := shares[0][1:]
		for i, s := range shares[1:] {
			if subtle.ConstantTimeCompare(first, s[1:]) != 1 {
				return nil, fmt.Errorf("shares: combine: share %d disagrees with share 0", i+1)
			}
		}
		return append([]byte(nil), first...), nil
	case schemeShamir:
		if len(shares) < 2 {
			return nil, errors.New("shares: combine: need at least 2 shamir shares")
		}
		parts := make([][]byte, len(shares))
		for i, s := range shares {
			parts[i] = s[1:]
		}
		k, err := shamir.Combine(parts)
		if err != nil {
			return nil, fmt.Errorf("shares: combine: %w", err)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("shares: combine: unknown share scheme %#x", scheme)
	}
}
