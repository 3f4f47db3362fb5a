package shares

import (
	"fmt"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pkey/p2pkey/generations"
)

// Receipt is a holder's signed acknowledgement that it stores the envelope
// with digest Digest, sealed by Owner for generation Generation as a share
// of split Split. It is what the custody ledger records. The signature
// covers generations.ReceiptMessage, which also binds the cluster ID.
type Receipt struct {
	Generation uint64
	Owner      peer.ID
	Holder     peer.ID
	// Split is the envelope's split (Binding.Split): the ledger counts an
	// owner's receipts of one split only.
	Split     generations.SplitID
	Digest    [32]byte
	Signature []byte
}

// Verify checks the receipt's signature for cluster clusterID against the
// public key inside the holder's peer ID.
func (r *Receipt) Verify(clusterID string) error {
	return VerifyReceipt(clusterID, r.Generation, r.Owner, r.Holder, r.Split, r.Digest, r.Signature)
}

// SignReceipt signs generations.ReceiptMessage for (clusterID, gen, owner,
// holder, split, digest) with the holder's identity key; the holder's peer
// ID is derived from the key. A zero split or digest is refused.
func SignReceipt(holder crypto.PrivKey, clusterID string, gen uint64, owner peer.ID, split generations.SplitID, digest [32]byte) ([]byte, error) {
	if holder == nil {
		return nil, fmt.Errorf("shares: sign receipt: no key")
	}
	if digest == ([32]byte{}) {
		return nil, fmt.Errorf("shares: sign receipt: zero digest")
	}
	if err := validateSplit(split); err != nil {
		return nil, fmt.Errorf("shares: sign receipt: %w", err)
	}
	if err := validateClusterID(clusterID); err != nil {
		return nil, fmt.Errorf("shares: sign receipt: %w", err)
	}
	if err := validatePeerID(owner); err != nil {
		return nil, fmt.Errorf("shares: sign receipt: owner: %w", err)
	}
	holderID, err := peer.IDFromPrivateKey(holder)
	if err != nil {
		return nil, fmt.Errorf("shares: sign receipt: %w", err)
	}
	sig, err := holder.Sign(generations.ReceiptMessage(clusterID, gen, owner, holderID, split, digest[:]))
	if err != nil {
		return nil, fmt.Errorf("shares: sign receipt: %w", err)
	}
	return sig, nil
}

// VerifyReceipt checks a receipt signature against the public key embedded
// in the holder's peer ID. It returns an error wrapping ErrBadReceipt if it
// does not verify, or if split is the zero ID (also wrapping ErrZeroSplit).
func VerifyReceipt(clusterID string, gen uint64, owner, holder peer.ID, split generations.SplitID, digest [32]byte, sig []byte) error {
	if err := validateSplit(split); err != nil {
		return fmt.Errorf("%w: %w", ErrBadReceipt, err)
	}
	pub, err := holder.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("%w: holder %s has no public key: %w", ErrBadReceipt, holder, err)
	}
	ok, err := pub.Verify(generations.ReceiptMessage(clusterID, gen, owner, holder, split, digest[:]), sig)
	if err != nil || !ok {
		return ErrBadReceipt
	}
	return nil
}
