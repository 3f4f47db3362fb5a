package shares

import (
	"errors"
	"fmt"

	"github.com/p2pkey/p2pkey/shares/pb"
)

// Errors a holder returns to a client. Each one crosses the wire as a
// pb.Response_Code, and the client turns the code back into the same
// sentinel, so errors.Is works on both sides.
var (
	// ErrBadRequest: the request or the envelope in it is malformed, or its
	// fields disagree with each other.
	ErrBadRequest = errors.New("shares: bad request")
	// ErrTooLarge: a message or an envelope is over its size limit.
	ErrTooLarge = errors.New("shares: message too large")
	// ErrWrongCluster: the message or the envelope names another cluster.
	ErrWrongCluster = errors.New("shares: wrong cluster")
	// ErrForbidden: the caller may not do this (not the owner, not
	// addressed to this holder, or refused by the policy).
	ErrForbidden = errors.New("shares: forbidden")
	// ErrNotFound: the holder has no envelope of the caller for that
	// generation.
	ErrNotFound = errors.New("shares: not found")
	// ErrDuplicate: the holder already stores a different envelope for the
	// same (generation, owner, holder). Rule S2 allows only one.
	ErrDuplicate = errors.New("shares: a different envelope is already stored")
	// ErrGenerationNotOpen: the policy refuses a push because the
	// generation is not open (or does not contain this holder).
	ErrGenerationNotOpen = errors.New("shares: generation not open")
	// ErrOwnerRemoved: the policy refuses because the owner was removed
	// from the cluster (rule R1).
	ErrOwnerRemoved = errors.New("shares: owner removed")
	// ErrRateLimited: too many fetches from this peer.
	ErrRateLimited = errors.New("shares: rate limited")
	// ErrOwnerLapsed: the owner lapsed (the retention bound retired its
	// newest escrow); holders serve none of its envelopes.
	ErrOwnerLapsed = errors.New("shares: owner lapsed")
	// ErrOwnerSuspended: a member voted to remove the owner (rule R2);
	// holders keep its envelopes and serve none until it is reinstated.
	ErrOwnerSuspended = errors.New("shares: owner suspended")
	// ErrInternal: the holder failed (for example its store).
	ErrInternal = errors.New("shares: holder internal error")
)

// Errors that stay local.
var (
	// ErrBadResponse: a holder's answer is malformed, or its receipt or
	// envelope does not match what was asked.
	ErrBadResponse = errors.New("shares: bad response from holder")
	// ErrExists is returned by Store.Put for a second, different envelope
	// under the same (generation, owner). The service reports it to the
	// client as ErrDuplicate.
	ErrExists = errors.New("shares: envelope already stored")
	// ErrClosed: the service or the store is closed.
	ErrClosed = errors.New("shares: closed")
	// ErrInvalidEnvelope: an envelope or a binding is malformed.
	ErrInvalidEnvelope = errors.New("shares: invalid envelope")
	// ErrOpenFailed: the envelope does not authenticate under the owner's
	// key and its binding: it was tampered with, moved, or sealed by
	// someone else.
	ErrOpenFailed = errors.New("shares: envelope does not open")
	// ErrNotOwner: the key given is not the envelope's owner. A holder
	// cannot open the envelopes it stores.
	ErrNotOwner = errors.New("shares: key is not the envelope owner")
	// ErrBadReceipt: a receipt signature does not verify.
	ErrBadReceipt = errors.New("shares: invalid receipt signature")
	// ErrKeyType: the identity key is not Ed25519.
	ErrKeyType = errors.New("shares: identity key must be Ed25519")
	// ErrThresholdTooLow: a split of fewer than two shares, or with a
	// threshold below two, was asked for. Any single share of such a split
	// is K itself, so it is never made, sealed or stored (rule K1).
	ErrThresholdTooLow = errors.New("shares: threshold below 2: a single share would be K itself")
	// ErrZeroSplit: a binding, receipt or push names the all-zero split ID,
	// which is never valid (NewSplitID never returns it).
	ErrZeroSplit = errors.New("shares: zero split ID")
	// ErrEnvelopeVersion: an envelope of another version than
	// EnvelopeVersion, for example a version 1 envelope, which names no
	// split. It comes wrapped with ErrInvalidEnvelope.
	ErrEnvelopeVersion = errors.New("shares: unsupported envelope version")
	// ErrNotErased: envelopes were deleted from the store, but rewriting the
	// store file to erase them from the disk failed. The next delete (or
	// OpenStore) tries again.
	ErrNotErased = errors.New("shares: deleted envelopes not yet erased from disk")
)

// wireErrors maps each wire code to its sentinel.
var wireErrors = map[pb.Response_Code]error{
	pb.Response_BAD_REQUEST:         ErrBadRequest,
	pb.Response_TOO_LARGE:           ErrTooLarge,
	pb.Response_WRONG_CLUSTER:       ErrWrongCluster,
	pb.Response_FORBIDDEN:           ErrForbidden,
	pb.Response_NOT_FOUND:           ErrNotFound,
	pb.Response_DUPLICATE:           ErrDuplicate,
	pb.Response_GENERATION_NOT_OPEN: ErrGenerationNotOpen,
	pb.Response_OWNER_REMOVED:       ErrOwnerRemoved,
	pb.Response_RATE_LIMITED:        ErrRateLimited,
	pb.Response_INTERNAL:            ErrInternal,
	pb.Response_OWNER_LAPSED:        ErrOwnerLapsed,
	pb.Response_OWNER_SUSPENDED:     ErrOwnerSuspended,
}

// codeOrder fixes the order in which codeOf tests the sentinels, so an
// error that wraps two of them always gets the same code.
var codeOrder = []pb.Response_Code{
	pb.Response_TOO_LARGE,
	pb.Response_WRONG_CLUSTER,
	pb.Response_OWNER_REMOVED,
	pb.Response_OWNER_LAPSED,
	pb.Response_OWNER_SUSPENDED,
	pb.Response_GENERATION_NOT_OPEN,
	pb.Response_RATE_LIMITED,
	pb.Response_DUPLICATE,
	pb.Response_NOT_FOUND,
	pb.Response_FORBIDDEN,
	pb.Response_BAD_REQUEST,
	pb.Response_INTERNAL,
}

// codeOf returns the wire code for err; an error that wraps none of the
// wire sentinels is INTERNAL.
func codeOf(err error) pb.Response_Code {
	for _, c := range codeOrder {
		if errors.Is(err, wireErrors[c]) {
			return c
		}
	}
	return pb.Response_INTERNAL
}

// policyError gives a policy refusal its wire meaning: an error that wraps
// one of the wire sentinels keeps it, any other refusal is ErrForbidden.
func policyError(err error) error {
	if codeOf(err) != pb.Response_INTERNAL || errors.Is(err, ErrInternal) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrForbidden, err)
}

// remoteError turns a holder's refusal into a local error that wraps the
// sentinel of its code.
func remoteError(code pb.Response_Code, msg string, holder fmt.Stringer) error {
	sentinel, ok := wireErrors[code]
	if !ok {
		return fmt.Errorf("%w: unknown response code %d from %s", ErrBadResponse, int32(code), holder)
	}
	if msg == "" {
		return fmt.Errorf("%w (from %s)", sentinel, holder)
	}
	return fmt.Errorf("%w (from %s): %s", sentinel, holder, msg)
}
