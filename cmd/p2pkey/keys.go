package main

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"filippo.io/age"
	"github.com/p2pkey/p2pkey/node"
	"github.com/spf13/cobra"
)

// agePurpose is the default purpose of the key encrypt and decrypt use.
const agePurpose = "p2pkey/age/v1"

// ageWorkFactor is scrypt's log2(N). The passphrase is a 256-bit random key,
// so the work factor only has to be nominal; 2^10 keeps each call fast.
const ageWorkFactor = 10

func lockedErr(err error) error {
	if errors.Is(err, node.ErrLocked) {
		return &statusError{code: exitLocked, err: err}
	}
	return err
}

func newKeyCmd(g *globals) *cobra.Command {
	var purpose, format string
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "key [--purpose NAME] [--format hex|base64|raw] [--wait]",
		Short: "Print a 32-byte key derived from this node's key",
		Long: `key prints HKDF-SHA256(K, purpose): a 32-byte key for one purpose, derived
from the node key K. K itself never leaves the daemon (rule K3). Different
purposes give independent keys; the same purpose always gives the same key,
across restarts.

If the node is locked (it has not gathered a threshold of its shares back) or
not yet escrowed, key exits with status 3 and says why, unless --wait is given,
in which case it waits until the node is unlocked or --timeout passes.

A user other than the daemon's gets keys from the daemon's application key
socket (daemon --app-socket), named with --socket or $P2PKEY_SOCKET; without
either, key uses /run/p2pkey/app.sock when this user cannot reach the data
directory's control socket. That socket gives only the purposes its rules grant.`,
		Example: `  p2pkey key --purpose disk
  p2pkey key --purpose db --format base64 --wait
  p2pkey key --purpose luks/data --format raw --wait | cryptsetup open /dev/sdb1 data --key-file=-
  p2pkey --socket /run/p2pkey/app.sock key --purpose app/web   # as an application user`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if purpose == "" {
				return &statusError{code: exitUsage, err: errors.New("--purpose must not be empty")}
			}
			ctx, cancel := reqCtx(cmd, timeout)
			defer cancel()
			if err := checkFormat(format); err != nil {
				return err
			}
			k, err := g.keyClient().Key(ctx, purpose, wait)
			if err != nil {
				return lockedErr(err)
			}
			defer clear(k)
			return writeKey(cmd.OutOrStdout(), k, format)
		},
	}
	cmd.Flags().StringVar(&purpose, "purpose", "default", "what the key is for; each purpose gives an independent key")
	cmd.Flags().StringVar(&format, "format", "hex", "output format: hex, base64 or raw")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the node is unlocked instead of exiting with status 3")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "with --wait, give up after this long")
	return cmd
}

// checkFormat refuses an unknown --format before any key is fetched.
func checkFormat(format string) error {
	switch format {
	case "hex", "base64", "raw":
		return nil
	}
	return &statusError{code: exitUsage, err: fmt.Errorf("--format %q: want hex, base64 or raw", format)}
}

// writeKey prints k in format (see checkFormat).
func writeKey(w io.Writer, k []byte, format string) error {
	var err error
	switch format {
	case "hex":
		_, err = fmt.Fprintln(w, hex.EncodeToString(k))
	case "base64":
		_, err = fmt.Fprintln(w, base64.StdEncoding.EncodeToString(k))
	case "raw":
		_, err = w.Write(k)
	default:
		return checkFormat(format)
	}
	return err
}

func ageKey(cmd *cobra.Command, g *globals, purpose string, wait bool) (string, error) {
	ctx, cancel := reqCtx(cmd, 10*time.Minute)
	defer cancel()
	k, err := g.keyClient().Key(ctx, purpose, wait)
	if err != nil {
		return "", lockedErr(err)
	}
	defer clear(k)
	return hex.EncodeToString(k), nil
}

func newEncryptCmd(g *globals) *cobra.Command {
	var purpose string
	var wait bool
	cmd := &cobra.Command{
		Use:   "encrypt [--purpose NAME] [--wait] < PLAINTEXT > CIPHERTEXT",
		Short: "Encrypt stdin to stdout in age format with a key derived from K",
		Long: `encrypt reads stdin and writes an age file (age-encryption.org/v1) to stdout.
The file key is wrapped with an scrypt stanza whose passphrase is the hex form
of the key derived for --purpose, so the file can also be opened by the age
tool itself given 'p2pkey key --purpose PURPOSE'. Exits with status 3 when the
node is locked.`,
		Example: `  tar c secrets/ | p2pkey encrypt > secrets.tar.age
  p2pkey encrypt --purpose backups < db.dump > db.dump.age`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			pass, err := ageKey(cmd, g, purpose, wait)
			if err != nil {
				return err
			}
			return ageEncrypt(cmd.OutOrStdout(), cmd.InOrStdin(), pass)
		},
	}
	cmd.Flags().StringVar(&purpose, "purpose", agePurpose, "purpose of the derived key")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the node is unlocked")
	return cmd
}

func newDecryptCmd(g *globals) *cobra.Command {
	var purpose string
	var wait bool
	cmd := &cobra.Command{
		Use:   "decrypt [--purpose NAME] [--wait] < CIPHERTEXT > PLAINTEXT",
		Short: "Decrypt an age file made by encrypt",
		Long: `decrypt reads an age file made by 'p2pkey encrypt' (with the same --purpose)
from stdin and writes the plaintext to stdout. It exits with status 3 when the
node is locked, and with status 1 if the file was not made with this node's key
and purpose or has been tampered with.`,
		Example: `  p2pkey decrypt < secrets.tar.age | tar x
  p2pkey decrypt --wait < db.dump.age > db.dump`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			pass, err := ageKey(cmd, g, purpose, wait)
			if err != nil {
				return err
			}
			return ageDecrypt(cmd.OutOrStdout(), cmd.InOrStdin(), pass)
		},
	}
	cmd.Flags().StringVar(&purpose, "purpose", agePurpose, "purpose of the derived key")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the node is unlocked")
	return cmd
}

// ageEncrypt writes in as an age file to out, its file key wrapped with an
// scrypt stanza whose passphrase is pass: the hex form of a derived key.
// encrypt and recover's encrypt use it, so either opens the other's files.
func ageEncrypt(out io.Writer, in io.Reader, pass string) error {
	r, err := age.NewScryptRecipient(pass)
	if err != nil {
		return err
	}
	r.SetWorkFactor(ageWorkFactor)
	w, err := age.Encrypt(out, r)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, in); err != nil {
		return err
	}
	return w.Close()
}

// ageDecrypt opens an age file made by ageEncrypt with pass.
func ageDecrypt(out io.Writer, in io.Reader, pass string) error {
	id, err := age.NewScryptIdentity(pass)
	if err != nil {
		return err
	}
	id.SetMaxWorkFactor(ageWorkFactor)
	r, err := age.Decrypt(in, id)
	if err != nil {
		return fmt.Errorf("decrypt: %w", err)
	}
	_, err = io.Copy(out, r)
	return err
}
