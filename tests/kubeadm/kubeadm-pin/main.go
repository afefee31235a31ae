// Command kubeadm-pin prints, for each certificate in a PEM file, the public-key pin that kubeadm's
// token discovery checks (`sha256:<hex>`, the --discovery-token-ca-cert-hash / caCertHashes form).
// It reads the file the way kubeadm reads cluster-info's CA (client-go's certutil) and hashes it with
// kubeadm's own pubkeypin package, so a test compares labctl's hash with kubeadm's, not with a copy.
//
//	kubeadm-pin CA.pem                  one pin per certificate, one per line
//	kubeadm-pin -check PIN CA.pem       exit 0 if kubeadm's discovery would accept PIN for the CA, else 1
package main

import (
	"flag"
	"fmt"
	"os"

	certutil "k8s.io/client-go/util/cert"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/pubkeypin"
)

func main() {
	check := flag.String("check", "", "a pin (sha256:<hex>) to check the certificates against, as kubeadm join does")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: kubeadm-pin [-check PIN] CA.pem")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *check); err != nil {
		fmt.Fprintln(os.Stderr, "kubeadm-pin:", err)
		os.Exit(1)
	}
}

func run(path, check string) error {
	pem, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	certs, err := certutil.ParseCertsPEM(pem)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if check == "" {
		for _, cert := range certs {
			fmt.Println(pubkeypin.Hash(cert))
		}
		return nil
	}
	// What kubeadm's token discovery does with caCertHashes and the CA it fetched.
	pins := pubkeypin.NewSet()
	if err := pins.Allow(check); err != nil {
		return err
	}
	return pins.CheckAny(certs)
}
