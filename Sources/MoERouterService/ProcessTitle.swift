import CMoERouterdOS

/// The process title in `ps` (libbsd setproctitle), e.g. "moe-routerd: 3 layers, 2 clients, 120 req/s".
public enum ProcessTitle {
    /// Call once, early in main.
    public static func initialize() {
        mro_proctitle_init(CommandLine.argc, CommandLine.unsafeArgv)
    }

    public static func set(_ title: String) { mro_proctitle_set(title) }

    /// Names the calling thread for `top -H` and debuggers (15 characters kept).
    public static func nameThread(_ name: String) { mro_set_thread_name(name) }
}
