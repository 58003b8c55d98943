package main

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
)

// hashValue is the tap's redaction hash: HMAC-SHA256 over Python's repr of the
// value, keyed by the salt, first 32 hex digits.
func hashValue(v any, salt []byte) (string, error) {
	text, err := pyRepr(v)
	if err != nil {
		return "", err
	}
	mac := hmac.New(sha256.New, salt)
	mac.Write([]byte(text))
	return "sha256:" + hex.EncodeToString(mac.Sum(nil))[:32], nil
}

// hashLines reads "salt<TAB>JSON" lines and writes "hash<TAB>repr" for each (or
// "error<TAB>reason"), so tests can hold this engine's hashes to the Python tap's.
func hashLines(in io.Reader, out io.Writer) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	w := bufio.NewWriter(out)
	defer w.Flush()
	for sc.Scan() {
		salt, doc, _ := strings.Cut(sc.Text(), "\t")
		v, err := parseJSON([]byte(doc))
		if err == nil {
			var h, r string
			if h, err = hashValue(v, []byte(salt)); err == nil {
				r, _ = pyRepr(v)
				fmt.Fprintf(w, "%s\t%s\n", h, r)
				continue
			}
		}
		fmt.Fprintf(w, "error\t%v\n", err)
	}
}
