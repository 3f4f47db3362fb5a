package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"filippo.io/age"
	"filippo.io/age/armor"
	"github.com/spf13/cobra"
)

// agePurpose is the default purpose of the key encrypt and decrypt use.
const agePurpose = "p2pkey/age/v1"

// ageWorkFactor is scrypt's log2(N). The passphrase is a 256-bit random key,
// so the work factor only has to be nominal; 2^10 keeps each call fast.
const ageWorkFactor = 10

// maxDecryptBuffer bounds the plaintext decrypt holds in memory when it
// writes to stdout: nothing is written until the whole file is
// authenticated, so a larger file needs -o FILE (a temporary file beside
// FILE, renamed once authenticated).
const maxDecryptBuffer = 64 << 20

// keyJSON is `key --json`.
type keyJSON struct {
	Purpose string `json:"purpose"`
	Format  string `json:"format"`
	Key     string `json:"key"`
}

func newKeyCmd(g *globals) *cobra.Command {
	var purpose, format, output string
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "key [--purpose NAME] [--format hex|base64|raw] [--wait [--timeout D]] [-o FILE] [--json]",
		Short: "Print a 32-byte key derived from this node's key",
		Long: `key prints HKDF-SHA256(K, purpose): a 32-byte key for one purpose, derived
from the node key K. K itself never leaves the daemon (rule K3). Different
purposes give independent keys; the same purpose always gives the same key,
across restarts.

If the node is locked (it has not gathered a threshold of its shares back) or
not yet escrowed, key exits with status 3 and says why, unless --wait is given,
in which case it waits until the node is unlocked; if --timeout passes first it
exits 3 and says why the node is still locked.

--format raw writes the 32 bytes as they are; key refuses to write them to a
terminal (exit 2): pipe them, or give -o FILE. -o FILE writes the key to FILE
(mode 0600, replaced atomically). --json prints {purpose, format, key} with the
key in --format (hex or base64).

A user other than the daemon's gets keys from the daemon's application key
socket (daemon --app-socket), named with --socket or $P2PKEY_SOCKET; without
either, key uses /run/p2pkey/app.sock when this user cannot reach the data
directory's control socket. That socket gives only the purposes its rules grant.`,
		Example: `  p2pkey key --purpose disk
  p2pkey key --purpose db --format base64 --wait --timeout 2m
  p2pkey key --purpose luks/data --format raw --wait | cryptsetup open /dev/sdb1 data --key-file=-
  p2pkey key --purpose luks/data --format raw -o /run/keys/data.key
  p2pkey --socket /run/p2pkey/app.sock key --purpose app/web   # as an application user`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if purpose == "" {
				return &statusError{code: exitUsage, err: errors.New("--purpose must not be empty")}
			}
			if err := checkFormat(format); err != nil {
				return err
			}
			if g.jsonOut && format == "raw" {
				return &statusError{code: exitUsage, err: errors.New("--json and --format raw do not go together: the JSON carries the key in hex or base64")}
			}
			if err := checkTimeout(timeout); err != nil {
				return err
			}
			if format == "raw" && output == "" && isTTY(cmd.OutOrStdout()) {
				return binaryToTerminal("a raw key", "--format hex")
			}
			ctx, cancel := reqCtx(cmd, timeout)
			defer cancel()
			c := g.keyClient()
			k, err := c.Key(ctx, purpose, wait)
			if err != nil {
				return explain(c, err, "get the key", timeout, true)
			}
			defer clear(k)
			write := func(w io.Writer) error {
				if g.jsonOut {
					var buf bytes.Buffer
					writeKey(&buf, k, format)
					defer clear(buf.Bytes())
					return printJSON(w, keyJSON{Purpose: purpose, Format: format, Key: string(bytes.TrimSpace(buf.Bytes()))})
				}
				return writeKey(w, k, format)
			}
			if output != "" {
				return writeFileAtomic(output, write)
			}
			return write(cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&purpose, "purpose", "default", "what the key is for; each purpose gives an independent key")
	cmd.Flags().StringVar(&format, "format", "hex", "output format: hex, base64 or raw")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the node is unlocked instead of exiting with status 3")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "give up after this long (exit 3 if the node is still locked)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "write the key to this file (mode 0600) instead of stdout")
	cmd.Flags().BoolVar(&g.jsonOut, "json", false, "print {purpose, format, key} as JSON")
	return cmd
}

// checkTimeout refuses a --timeout that is not positive.
func checkTimeout(d time.Duration) error {
	if d <= 0 {
		return &statusError{code: exitUsage, err: fmt.Errorf("--timeout must be positive (got %v)", d)}
	}
	return nil
}

// binaryToTerminal is the usage error of a command about to write binary
// data to a terminal.
func binaryToTerminal(what, alt string) error {
	return &statusError{code: exitUsage, err: fmt.Errorf("refusing to write %s to a terminal: redirect or pipe stdout, give -o FILE, or use %s", what, alt)}
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

// writeFileAtomic writes path through write: into a new temporary file
// (mode 0600) in path's directory, renamed over path only when write and
// the close succeed; on failure nothing is left behind and path is as it
// was.
func writeFileAtomic(path string, write func(io.Writer) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".p2pkey-*")
	if err != nil {
		return fmt.Errorf("-o %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return err
	}
	bw := bufio.NewWriter(f)
	if err := write(bw); err != nil {
		return fail(err)
	}
	if err := bw.Flush(); err != nil {
		return fail(fmt.Errorf("-o %s: %w", path, err))
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("-o %s: %w", path, err))
	}
	if err := f.Close(); err != nil {
		return fail(fmt.Errorf("-o %s: %w", path, err))
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("-o %s: %w", path, err)
	}
	return nil
}

// ageKey fetches the hex passphrase of purpose for encrypt and decrypt.
func ageKey(cmd *cobra.Command, g *globals, purpose string, wait bool, timeout time.Duration) (string, error) {
	if err := checkTimeout(timeout); err != nil {
		return "", err
	}
	ctx, cancel := reqCtx(cmd, timeout)
	defer cancel()
	c := g.keyClient()
	k, err := c.Key(ctx, purpose, wait)
	if err != nil {
		return "", explain(c, err, "get the key", timeout, true)
	}
	defer clear(k)
	return hex.EncodeToString(k), nil
}

// ageFlags are encrypt's and decrypt's flags.
type ageFlags struct {
	purpose, output string
	wait, armor     bool
	timeout         time.Duration
}

func (f *ageFlags) register(cmd *cobra.Command, encrypt bool) {
	cmd.Flags().StringVar(&f.purpose, "purpose", agePurpose, "purpose of the derived key")
	cmd.Flags().BoolVar(&f.wait, "wait", false, "wait until the node is unlocked")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 10*time.Minute, "give up after this long (exit 3 if the node is still locked)")
	cmd.Flags().StringVarP(&f.output, "output", "o", "", "write to this file (through a temporary file beside it, renamed when done) instead of stdout")
	if encrypt {
		cmd.Flags().BoolVarP(&f.armor, "armor", "a", false, "write an ASCII-armoured (PEM) age file, which a terminal can show")
	}
}

func newEncryptCmd(g *globals) *cobra.Command {
	var f ageFlags
	cmd := &cobra.Command{
		Use:   "encrypt [--purpose NAME] [--wait [--timeout D]] [-a] [-o FILE] < PLAINTEXT",
		Short: "Encrypt stdin in age format with a key derived from K",
		Long: `encrypt reads stdin and writes an age file (age-encryption.org/v1) to stdout, or
to -o FILE. The file key is wrapped with an scrypt stanza whose passphrase is
the hex form of the key derived for --purpose, so the file can also be opened
by the age tool itself given 'p2pkey key --purpose PURPOSE'. Exits with status
3 when the node is locked; with --wait, when it is still locked after
--timeout.

An age file is binary: encrypt refuses to write it to a terminal (exit 2)
unless -a (--armor) asks for the ASCII-armoured form; redirect stdout or give
-o FILE.`,
		Example: `  tar c secrets/ | p2pkey encrypt > secrets.tar.age
  p2pkey encrypt --purpose backups -o db.dump.age < db.dump
  p2pkey encrypt -a < note.txt`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.output == "" && !f.armor && isTTY(cmd.OutOrStdout()) {
				return binaryToTerminal("an age file (binary)", "-a (--armor)")
			}
			pass, err := ageKey(cmd, g, f.purpose, f.wait, f.timeout)
			if err != nil {
				return err
			}
			var tag *fileTag
			if tc := g.tagContext(cmd); tc != nil && tc.cluster != "" {
				tag = makeTag(tc.cluster, tc.self, f.purpose)
			}
			write := func(w io.Writer) error {
				if f.armor {
					aw := armor.NewWriter(w)
					if err := ageEncrypt(aw, cmd.InOrStdin(), pass, tag); err != nil {
						return err
					}
					return aw.Close()
				}
				return ageEncrypt(w, cmd.InOrStdin(), pass, tag)
			}
			if f.output != "" {
				return writeFileAtomic(f.output, write)
			}
			return write(cmd.OutOrStdout())
		},
	}
	f.register(cmd, true)
	return cmd
}

func newDecryptCmd(g *globals) *cobra.Command {
	var f ageFlags
	cmd := &cobra.Command{
		Use:   "decrypt [--purpose NAME] [--wait [--timeout D]] [-o FILE] < CIPHERTEXT",
		Short: "Decrypt an age file made by encrypt",
		Long: `decrypt reads an age file made by 'p2pkey encrypt' (with the same --purpose;
binary or armoured) from stdin and writes the plaintext to stdout, or to -o
FILE. It writes nothing until the whole file is authenticated: to stdout it
holds the plaintext in memory (up to 64 MiB; a larger file needs -o), and -o
FILE decrypts into a temporary file beside FILE, renamed only once the file
proved whole. A truncated or altered file leaves nothing behind.

It exits with status 3 when the node is locked, and with status 1 if the file
does not open with this node's key for --purpose (it was made by another node
or with another purpose) or has been altered.`,
		Example: `  p2pkey decrypt < secrets.tar.age | tar x
  p2pkey decrypt --wait --timeout 5m -o db.dump < db.dump.age`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			pass, err := ageKey(cmd, g, f.purpose, f.wait, f.timeout)
			if err != nil {
				return err
			}
			in := cmd.InOrStdin()
			who := func() *tagContext { return g.tagContext(cmd) }
			if f.output != "" {
				return writeFileAtomic(f.output, func(w io.Writer) error {
					return ageDecrypt(w, in, pass, f.purpose, who)
				})
			}
			var buf limitedBuffer
			buf.max = maxDecryptBuffer
			defer clear(buf.b.Bytes())
			if err := ageDecrypt(&buf, in, pass, f.purpose, who); err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(buf.b.Bytes())
			return err
		},
	}
	f.register(cmd, false)
	return cmd
}

// tagContext asks the daemon who this node is and who its members are, for
// the tag of a file (see agefile.go); nil when the socket does not say (an
// application key socket answers keys only).
func (g *globals) tagContext(cmd *cobra.Command) *tagContext {
	ctx, cancel := reqCtx(cmd, diagnoseTimeout)
	defer cancel()
	st, err := g.keyClient().Status(ctx)
	if err != nil {
		return nil
	}
	tc := &tagContext{cluster: st.ClusterID, self: st.PeerID, purposes: []string{agePurpose}}
	for _, m := range st.Members {
		if m.PeerID != st.PeerID {
			tc.members = append(tc.members, m.PeerID)
		}
	}
	return tc
}

// limitedBuffer is a bytes.Buffer that refuses to grow past max.
type limitedBuffer struct {
	b   bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if l.b.Len()+len(p) > l.max {
		return 0, fmt.Errorf("the plaintext is over %d MiB, more than decrypt holds in memory before writing to stdout; use -o FILE", l.max>>20)
	}
	return l.b.Write(p)
}

// ageEncrypt writes in as an age file to out, its file key wrapped with an
// scrypt stanza whose passphrase is pass (the hex form of a derived key)
// and whose salt carries tag (see agefile.go; nil: none). encrypt and
// recover's encrypt use it, so either opens the other's files, and so does
// the age tool.
func ageEncrypt(out io.Writer, in io.Reader, pass string, tag *fileTag) error {
	w, err := age.Encrypt(out, &taggedScrypt{pass: []byte(pass), tag: tag, logN: ageWorkFactor})
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, in); err != nil {
		return err
	}
	return w.Close()
}

// armorHeader starts an ASCII-armoured age file.
const armorHeader = "-----BEGIN AGE ENCRYPTED FILE-----"

// ageDecrypt opens an age file made by ageEncrypt with pass, binary or
// armoured, and writes the plaintext to out. Age authenticates the file
// chunk by chunk, so out gets plaintext before a truncation or alteration
// further on is found: the callers hold out back until ageDecrypt returns
// nil. When the file does not open with pass, who (if not nil) says which
// node and purpose its tag names.
func ageDecrypt(out io.Writer, in io.Reader, pass, purpose string, who func() *tagContext) error {
	id, err := age.NewScryptIdentity(pass)
	if err != nil {
		return err
	}
	id.SetMaxWorkFactor(ageWorkFactor)
	br := bufio.NewReader(in)
	var src io.Reader = br
	if head, _ := br.Peek(len(armorHeader)); string(head) == armorHeader {
		src = armor.NewReader(br)
	}
	hr := bufio.NewReaderSize(src, 512)
	head, _ := hr.Peek(256)
	head = bytes.Clone(head)
	r, err := age.Decrypt(hr, id)
	if err != nil {
		var nm *age.NoIdentityMatchError
		if errors.As(err, &nm) {
			msg := fmt.Sprintf("decrypt: this file does not open with this node's key for purpose %q", purpose)
			var why string
			if who != nil {
				why = who().whose(readTag(head), purpose)
			}
			if why == "" {
				why = "it was made by another node, or with another --purpose (or altered)"
			}
			return fmt.Errorf("%s: %s", msg, why)
		}
		return fmt.Errorf("decrypt: %w", err)
	}
	if _, err := io.Copy(out, r); err != nil {
		return fmt.Errorf("decrypt: %w (nothing was written)", err)
	}
	return nil
}
