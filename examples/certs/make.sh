#!/bin/sh
# Re-creates the example certificates: an example root CA and server certificates for the
# example configurations, valid 10 years. FOR EXAMPLES AND TESTS ONLY: the private keys are
# public. Real deployments export their own certificates (for instance a .pfx from Windows).
set -eu
cd "$(dirname "$0")"
days=3650
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
    -subj "/CN=Plugboard Example Root" -keyout root.key -out root.pem 2>/dev/null
issue() { # stem key-type names...
    stem=$1; kind=$2; shift 2
    san=$(printf 'DNS:%s,' "$@"); san=${san%,}
    case $kind in
        rsa) newkey="-newkey rsa:2048" ;;
        ec) newkey="-newkey ec -pkeyopt ec_paramgen_curve:P-256" ;;
    esac
    openssl req -new $newkey -nodes -subj "/CN=$1" -keyout "$stem.key" -out "$stem.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > "$stem.ext"
    openssl x509 -req -in "$stem.csr" -CA root.pem -CAkey root.key -CAcreateserial \
        -days $days -extfile "$stem.ext" -out "$stem.pem" 2>/dev/null
    rm -f "$stem.csr" "$stem.ext"
}
# Exchange 2010 CAS array: one SAN certificate for the published names (PEM, as on Linux).
issue mail rsa mail.example.com autodiscover.example.com
# Lync 2010 pool: the external web services name, exported from Windows as a .pfx with the
# legacy encryption Windows Server 2008 R2 uses, plus the root in its own file.
issue lyncweb rsa lyncweb.example.com lyncdiscover.example.com
printf 'example-only\n' > lyncweb.pass
openssl pkcs12 -export -legacy -in lyncweb.pem -inkey lyncweb.key -out lyncweb.pfx \
    -passout file:lyncweb.pass -descert 2>/dev/null \
  || openssl pkcs12 -export -in lyncweb.pem -inkey lyncweb.key -out lyncweb.pfx \
    -passout file:lyncweb.pass -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES
rm -f lyncweb.key lyncweb.pem root.key root.srl
