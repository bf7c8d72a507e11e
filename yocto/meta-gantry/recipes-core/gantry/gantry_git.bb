SUMMARY = "Lean Docker, networking and power daemon for industrial IoT gateways"
DESCRIPTION = "gantry runs as a systemd service, manages containers through \
               the local Docker socket and serves HTTP APIs for images, \
               containers and volumes."
# Placeholders (reserved example.com domain): the integrator sets HOMEPAGE,
# BUGTRACKER and SRC_URI to wherever the gantry repository is hosted.
HOMEPAGE = "https://git.example.com/gantry"
BUGTRACKER = "https://git.example.com/gantry/issues"
SECTION = "admin"
LICENSE = "MIT | Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE-MIT;md5=4b7f32defddf24dad78509ad108e1615 \
                    file://LICENSE-APACHE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# Not on crates.io and not in NVD; a vendor-qualified name keeps cve-check from
# matching the unrelated "gantry" web template framework.
CVE_PRODUCT = "gantry_developers:gantry"

PV = "0.1.0+git"

SRC_URI = "git://git.example.com/gantry.git;protocol=https;branch=main"
# gantry-crates.inc is generated from Cargo.lock of the same commit as this
# layer, so SRCREV must name a commit with that Cargo.lock: bump both together
# (scripts/gen-crates-inc --check tells when the .inc is stale).
SRCREV = "cc9abe074a743efa4250df83562ead668dfd2fb9"

inherit cargo cargo-update-recipe-crates systemd features_check

# A Type=notify unit with a watchdog: there is no sysvinit script.
REQUIRED_DISTRO_FEATURES = "systemd"

require ${BPN}-crates.inc

# Packed relative relocations (DT_RELR), as .cargo/config.toml asks for other builds (the
# cargo class's RUSTFLAGS replaces that file's rustflags): about 0.3 MiB less, PIE kept.
# Needs glibc >= 2.36 on the target and GNU ld >= 2.41 for aarch64 (>= 2.38 for x86_64);
# wrynose and later ship newer ones.
RUSTFLAGS:append = " -C link-arg=-Wl,-z,pack-relative-relocs"

SYSTEMD_SERVICE:${PN} = "gantry.service"
SYSTEMD_AUTO_ENABLE = "enable"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/gantry.service ${D}${systemd_system_unitdir}/gantry.service
    sed -i -e 's,/usr/bin/gantry,${bindir}/gantry,' \
        -e 's,/etc/gantry,${sysconfdir}/gantry,g' \
        ${D}${systemd_system_unitdir}/gantry.service

    install -d -m 0750 ${D}${sysconfdir}/gantry
    install -m 0640 ${S}/systemd/gantry.toml.example ${D}${sysconfdir}/gantry/gantry.toml
}

CONFFILES:${PN} = "${sysconfdir}/gantry/gantry.toml"

# "docker" is RPROVIDED by both docker-moby and docker-ce (meta-virtualization);
# the distro picks one with PREFERRED_RPROVIDER_docker, so gantry does not
# force an engine. nftables: container networking rules.
RDEPENDS:${PN} += "docker nftables"
