package main

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"filippo.io/age"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/scrypt"
)

// Files made by encrypt say, in public, which node and purpose they need,
// so that decrypt on the wrong node can say where to go rather than
// "incorrect passphrase". The age format has no room for that beside an
// scrypt stanza (which must be alone), so it goes in the stanza's 16-byte
// salt: 4 bytes that identify the node (cluster and peer ID), 4 that
// identify the purpose, then 8 random bytes. The salt's only job is to keep
// one passphrase's work from serving another file; the passphrase here is a
// 256-bit key, so 8 random bytes are ample. The tag reveals nothing to
// whoever does not know the cluster's ID and members, and to whoever does,
// only which node made the file, not what is in it. The age tool opens
// these files as any other scrypt file.

const (
	scryptLabel   = "age-encryption.org/v1/scrypt"
	tagNodeLen    = 4
	tagPurposeLen = 4
)

// fileTag identifies the node and purpose a file is encrypted for.
type fileTag struct {
	node, purpose [4]byte
}

func tagHash(parts ...string) [32]byte {
	return sha256.Sum256([]byte("p2pkey/age-tag/v1\x00" + strings.Join(parts, "\x00")))
}

// makeTag is the tag of files node peerID of cluster makes for purpose.
func makeTag(cluster, peerID, purpose string) *fileTag {
	var t fileTag
	n, p := tagHash(cluster, peerID), tagHash(cluster, peerID, purpose)
	copy(t.node[:], n[:])
	copy(t.purpose[:], p[:])
	return &t
}

// taggedScrypt is age's scrypt recipient with the tag in its salt (see
// above): its stanza is exactly what age.ScryptRecipient writes, and
// age.ScryptIdentity opens it.
type taggedScrypt struct {
	pass []byte
	tag  *fileTag // nil: an all-random salt
	logN int
}

// Wrap implements age.Recipient.
func (r *taggedScrypt) Wrap(fileKey []byte) ([]*age.Stanza, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	if r.tag != nil {
		copy(salt, r.tag.node[:])
		copy(salt[tagNodeLen:], r.tag.purpose[:])
	}
	k, err := scrypt.Key(r.pass, append([]byte(scryptLabel), salt...), 1<<r.logN, 8, 1, chacha20poly1305.KeySize)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	aead, err := chacha20poly1305.New(k)
	if err != nil {
		return nil, err
	}
	body := aead.Seal(nil, make([]byte, chacha20poly1305.NonceSize), fileKey, nil)
	return []*age.Stanza{{Type: "scrypt", Args: []string{base64.RawStdEncoding.EncodeToString(salt), strconv.Itoa(r.logN)}, Body: body}}, nil
}

// WrapWithLabels implements age.RecipientWithLabels as age's scrypt
// recipient does: a random label, so that no other recipient can join it.
func (r *taggedScrypt) WrapWithLabels(fileKey []byte) ([]*age.Stanza, []string, error) {
	s, err := r.Wrap(fileKey)
	if err != nil {
		return nil, nil, err
	}
	random := make([]byte, 16)
	if _, err := rand.Read(random); err != nil {
		return nil, nil, err
	}
	return s, []string{hex.EncodeToString(random)}, nil
}

// readTag reads the tag from the head of an age file (binary, after any
// armour), or nil when the head is not a single scrypt stanza.
func readTag(head []byte) *fileTag {
	sc := bufio.NewScanner(strings.NewReader(string(head)))
	if !sc.Scan() || sc.Text() != "age-encryption.org/v1" || !sc.Scan() {
		return nil
	}
	f := strings.Fields(sc.Text())
	if len(f) != 4 || f[0] != "->" || f[1] != "scrypt" {
		return nil
	}
	salt, err := base64.RawStdEncoding.DecodeString(f[2])
	if err != nil || len(salt) != 16 {
		return nil
	}
	var t fileTag
	copy(t.node[:], salt)
	copy(t.purpose[:], salt[tagNodeLen:])
	return &t
}

// tagContext is what decrypt knows to name the node and purpose of a file
// that does not open: the cluster, this node, the other members, and the
// purposes worth trying.
type tagContext struct {
	cluster, self string
	members       []string
	purposes      []string
}

// whose says whom a file with tag t was made for, or "" when it cannot
// tell. purpose is the purpose decrypt used.
func (c *tagContext) whose(t *fileTag, purpose string) string {
	if c == nil || t == nil || c.cluster == "" {
		return ""
	}
	for _, id := range append([]string{c.self}, c.members...) {
		if id == "" || makeTag(c.cluster, id, "").node != t.node {
			continue
		}
		found := ""
		for _, p := range append([]string{purpose}, c.purposes...) {
			if makeTag(c.cluster, id, p).purpose == t.purpose {
				found = p
				break
			}
		}
		switch {
		case id == c.self && found == purpose:
			return "it was made by this node for this purpose, yet this node's key does not open it: it was altered, or this node's key has changed since"
		case id == c.self && found != "":
			return fmt.Sprintf("it was made by this node for purpose %q: run decrypt with --purpose %s", found, found)
		case id == c.self:
			return "it was made by this node with another --purpose"
		case found != "":
			return fmt.Sprintf("it was made by node %s for purpose %q: decrypt it on that node, or with its recovery kit ('p2pkey recover --kit FILE --identity FILE decrypt --purpose %s')", id, found, found)
		default:
			return fmt.Sprintf("it was made by node %s (with a purpose other than %q): decrypt it on that node, or with its recovery kit", id, purpose)
		}
	}
	return "it was not made by a member of this cluster that this node knows (or by a p2pkey that did not tag its files)"
}
