package shares

import (
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
	// schemeWhole was the threshold-1 encoding (the rest was K itself).
	// Split no longer makes it, and Seal and Combine refuse it (rule K1: no
	// single share may be K).
	schemeWhole byte = 0x02
)

// MaxShares is the largest number of shares Split makes (shamir's x
// coordinates are the non-zero bytes).
const MaxShares = 255

// Split splits the secret k into n shares, any t of which give k back, with
// Shamir's Secret Sharing over GF(2^8) (hashicorp/vault/shamir).
// 2 ≤ t ≤ n ≤ MaxShares: a split with t < 2 or n < 2 is refused with
// ErrThresholdTooLow, because any one of its shares would be k itself
// (rule K1: a cluster of one is unescrowed, and K stays in memory).
//
// Each share starts with a scheme byte. Split does not keep or zero k; the
// caller owns it. Give every split a fresh ID (NewSplitID) and seal each of
// its shares under that ID.
func Split(k []byte, n, t int) ([][]byte, error) {
	switch {
	case len(k) == 0:
		return nil, errors.New("shares: split: empty secret")
	case n > MaxShares:
		return nil, fmt.Errorf("shares: split: %d shares, want 2 to %d", n, MaxShares)
	case n < 2:
		return nil, fmt.Errorf("%w: split into %d shares", ErrThresholdTooLow, n)
	case t < 2:
		return nil, fmt.Errorf("%w: threshold %d", ErrThresholdTooLow, t)
	case t > n:
		return nil, fmt.Errorf("shares: split: threshold %d, want 2 to n=%d", t, n)
	}
	parts, err := shamir.Split(k, n, t)
	if err != nil {
		return nil, fmt.Errorf("shares: split: %w", err)
	}
	out := make([][]byte, n)
	for i, p := range parts {
		out[i] = append([]byte{schemeShamir}, p...)
		clear(p)
	}
	return out, nil
}

// checkShare accepts exactly the shares Split makes: a Shamir share of a
// secret of at least one byte.
func checkShare(share []byte) error {
	switch {
	case len(share) > 0 && share[0] == schemeWhole:
		return fmt.Errorf("%w: refusing to seal a threshold-1 share", ErrThresholdTooLow)
	case len(share) < 3 || share[0] != schemeShamir:
		return fmt.Errorf("%w: not a share made by Split", ErrInvalidEnvelope)
	}
	return nil
}

// Combine returns the secret from shares made by one Split. With Shamir
// shares it needs at least two, and it cannot tell whether it got at least
// the threshold: fewer than t shares give a wrong secret without an error.
// That is why the node checks a reconstructed K against its key-check value
// (rule K4). Combine refuses duplicate, mixed-scheme, or mismatched shares,
// and the threshold-1 shares of older versions.
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
		return nil, fmt.Errorf("shares: combine: %w: threshold-1 shares are refused", ErrThresholdTooLow)
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
