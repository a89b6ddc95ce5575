# The C client library and the C/C++ examples, built without Swift.
#   make clientlib   -> build/lib/libmoerouter.so{,.1} and build/lib/pkgconfig/moe-router.pc
#   make examples    -> build/examples/route_c, build/examples/route_cpp
#   make install PREFIX=/usr/local
CC ?= cc
CXX ?= c++
CFLAGS ?= -O2 -g
PREFIX ?= /usr/local
BUILD := build
ROOT := $(abspath .)
WARN := -Wall -Wextra -Werror

LIB_SRC := clients/c/moe_router_client.c clients/c/moe_router_status.c
LIB := $(BUILD)/lib/libmoerouter.so.1
PC := $(BUILD)/lib/pkgconfig/moe-router.pc

.PHONY: all clientlib examples install clean
all: clientlib examples
clientlib: $(LIB) $(BUILD)/lib/libmoerouter.so $(PC)

$(LIB): $(LIB_SRC) Include/moe_router.h
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

install: clientlib
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 0755 $(LIB) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libmoerouter.so.1 $(DESTDIR)$(PREFIX)/lib/libmoerouter.so
	install -m 0644 Include/moe_router.h $(DESTDIR)$(PREFIX)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|; s|@INCLUDEDIR@|$(PREFIX)/include|' clients/c/moe-router.pc.in \
		> $(DESTDIR)$(PREFIX)/lib/pkgconfig/moe-router.pc

clean:
	rm -rf $(BUILD)
