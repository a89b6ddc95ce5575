# The C client library and the C/C++ examples, built without Swift.
#   make clientlib   -> build/lib/libmoerouter.so{,.1} and build/lib/pkgconfig/moe-router.pc
#   make examples    -> build/examples/route_c, build/examples/route_cpp
#   make install PREFIX=/usr/local   -> release binaries, systemd units, header, client library,
#                                        pkg-config file, docs (DESTDIR supported)
#   make uninstall PREFIX=/usr/local -> removes exactly what install put there
CC ?= cc
CXX ?= c++
CFLAGS ?= -O2 -g
PREFIX ?= /usr/local
BUILD := build
ROOT := $(abspath .)
WARN := -Wall -Wextra -Werror

LIB_SRC := clients/c/moe_router_client.c Sources/CMoERouterWire/moe_router_status.c
LIB := $(BUILD)/lib/libmoerouter.so.1
PC := $(BUILD)/lib/pkgconfig/moe-router.pc

.PHONY: all clientlib examples install uninstall swift-release clean
all: clientlib examples
clientlib: $(LIB) $(BUILD)/lib/libmoerouter.so $(PC)

HEADERS := Include/moe_router.h Include/moe_router_wire.h Include/moe_router_client.h

$(LIB): $(LIB_SRC) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(WARN) $(CFLAGS) -fPIC -shared -fvisibility=default -IInclude \
		-Wl,-soname,libmoerouter.so.1 -o $@ $(LIB_SRC) -lzmq

$(BUILD)/lib/libmoerouter.so: $(LIB)
	ln -sf libmoerouter.so.1 $@

$(PC): clients/c/moe-router.pc.in
	@mkdir -p $(dir $@)
	sed -e 's|@PREFIX@|$(ROOT)/$(BUILD)|; s|@INCLUDEDIR@|$(ROOT)/Include|' $< > $@

examples: $(BUILD)/examples/route_c $(BUILD)/examples/route_cpp

$(BUILD)/examples/route_c: examples/c/route.c clientlib
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(WARN) $(CFLAGS) $$(PKG_CONFIG_PATH=$(BUILD)/lib/pkgconfig pkg-config --cflags moe-router) \
		-o $@ $< $$(PKG_CONFIG_PATH=$(BUILD)/lib/pkgconfig pkg-config --libs moe-router) -Wl,-rpath,$(ROOT)/$(BUILD)/lib

$(BUILD)/examples/route_cpp: examples/cpp/route.cpp clientlib
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 $(WARN) $(CFLAGS) $$(PKG_CONFIG_PATH=$(BUILD)/lib/pkgconfig pkg-config --cflags moe-router) \
		-o $@ $< $$(PKG_CONFIG_PATH=$(BUILD)/lib/pkgconfig pkg-config --libs moe-router) -Wl,-rpath,$(ROOT)/$(BUILD)/lib

# The Swift binaries, release build (SWIFT_SCRATCH: SwiftPM's --scratch-path).
SWIFT ?= swift
SWIFT_SCRATCH ?= .build
BINARIES := moe-routerd moe-routerctl moe-router-bench
SWIFT_BIN = $(shell $(SWIFT) build -c release --scratch-path $(SWIFT_SCRATCH) --show-bin-path)
UNITS := moe-routerd.service moe-routerd@.service moe-routerd.socket
D := $(DESTDIR)$(PREFIX)

swift-release:
	for p in $(BINARIES); do $(SWIFT) build -c release --scratch-path $(SWIFT_SCRATCH) --product $$p || exit 1; done

install: clientlib swift-release
	install -d $(D)/bin $(D)/lib/pkgconfig $(D)/include $(D)/lib/systemd/system $(D)/lib/sysusers.d \
		$(D)/share/doc/moe-router $(D)/share/moe-router
	for b in $(BINARIES); do install -m 0755 $(SWIFT_BIN)/$$b $(D)/bin/; done
	install -m 0755 $(LIB) $(D)/lib/
	ln -sf libmoerouter.so.1 $(D)/lib/libmoerouter.so
	install -m 0644 $(HEADERS) $(D)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|; s|@INCLUDEDIR@|$(PREFIX)/include|' clients/c/moe-router.pc.in \
		> $(D)/lib/pkgconfig/moe-router.pc
	# Units name /usr/local; they get this PREFIX.
	for u in $(UNITS); do sed -e 's|/usr/local|$(PREFIX)|g' systemd/$$u > $(D)/lib/systemd/system/$$u; \
		chmod 0644 $(D)/lib/systemd/system/$$u; done
	install -m 0644 systemd/moe-router.sysusers $(D)/lib/sysusers.d/moe-router.conf
	install -m 0644 systemd/routerd.yaml.example $(D)/share/moe-router/routerd.yaml.example
	install -m 0644 README.md docs/PROTOCOL.md $(D)/share/doc/moe-router/
	# The linker's cache learns the new library (a real install as root only, not a staged one).
	if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig || true; fi

uninstall:
	rm -f $(addprefix $(D)/bin/,$(BINARIES)) $(D)/lib/libmoerouter.so.1 $(D)/lib/libmoerouter.so \
		$(addprefix $(D)/include/,$(notdir $(HEADERS))) $(D)/lib/pkgconfig/moe-router.pc \
		$(addprefix $(D)/lib/systemd/system/,$(UNITS)) $(D)/lib/sysusers.d/moe-router.conf \
		$(D)/share/moe-router/routerd.yaml.example $(D)/share/doc/moe-router/README.md \
		$(D)/share/doc/moe-router/PROTOCOL.md
	-rmdir $(D)/share/doc/moe-router $(D)/share/moe-router 2>/dev/null

clean:
	rm -rf $(BUILD)
