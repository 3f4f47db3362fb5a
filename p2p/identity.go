package p2p

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// identityHeader starts every identity file. The version lets a later format
// be told apart from this one (rule S6).
const identityHeader = "p2pkey-identity-v1\n"

// maxIdentityFile bounds how much of a file is read as an identity.
const maxIdentityFile = 4096

// ErrIdentityExists is returned by CreateIdentity when the file already exists.
var ErrIdentityExists = errors.New("identity already exists")

// CreateIdentity makes a new Ed25519 identity and writes it to path with mode
// 0600. It refuses to overwrite an existing file.
func CreateIdentity(path string) (crypto.PrivKey, error) {
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate identity: %w", err)
	}
	raw, err := crypto.MarshalPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode identity: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%w at %s", ErrIdentityExists, path)
	}
	if err != nil {
		return nil, err
	}
	data := append([]byte(identityHeader), raw...)
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	return priv, f.Close()
}

// LoadIdentity reads an identity written by CreateIdentity. It refuses a file
// that others can read, as ssh does for private keys.
func LoadIdentity(path string) (crypto.PrivKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("identity %s has mode %v: it must not be readable by group or others (chmod 600)", path, st.Mode().Perm())
	}
	if st.Size() > maxIdentityFile {
		return nil, fmt.Errorf("identity %s is too large (%d bytes)", path, st.Size())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	raw, ok := bytes.CutPrefix(data, []byte(identityHeader))
	if !ok {
		return nil, fmt.Errorf("identity %s: unknown format (want header %q)", path, identityHeader[:len(identityHeader)-1])
	}
	priv, err := crypto.UnmarshalPrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("identity %s: %w", path, err)
	}
	if priv.Type() != crypto.Ed25519 {
		return nil, fmt.Errorf("identity %s: key type %v, want Ed25519", path, priv.Type())
	}
	return priv, nil
}
