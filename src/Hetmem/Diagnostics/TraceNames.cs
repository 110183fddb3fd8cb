using System.Collections.Frozen;

namespace Hetmem.Diagnostics;

/// <summary>
/// Cached, allocation-free names for trace events: enum values (e.g. an MMU-notifier event kind) and categories.
/// </summary>
public static class TraceNames
{
    /// <summary>The name of <paramref name="value"/>, cached; defined values never allocate.</summary>
    /// <typeparam name="TEnum">The enum type.</typeparam>
    /// <param name="value">The value.</param>
    /// <returns>Its name (or its <c>ToString()</c> for a value with no single name).</returns>
    public static string Of<TEnum>(TEnum value)
        where TEnum : struct, Enum
        => Cache<TEnum>.s_names.TryGetValue(value, out string? name) ? name : value.ToString();

    /// <summary>The exported <c>cat</c> string of a category (snake_case, e.g. <c>cpu_fault</c>).</summary>
    /// <param name="category">The category.</param>
    /// <returns>The category name.</returns>
    public static string Of(TraceCategory category) => category switch
    {
        TraceCategory.CpuFault => "cpu_fault",
        TraceCategory.DeviceFault => "device_fault",
        TraceCategory.Invalidate => "invalidate",
        TraceCategory.Migrate => "migrate",
        TraceCategory.Hmm => "hmm",
        TraceCategory.Memory => "memory",
        TraceCategory.Lock => "lock",
        TraceCategory.Workload => "workload",
        TraceCategory.Bench => "bench",
        _ => "other",
    };

    private static class Cache<TEnum>
        where TEnum : struct, Enum
    {
        internal static readonly FrozenDictionary<TEnum, string> s_names = Build();

        private static FrozenDictionary<TEnum, string> Build()
        {
            var d = new Dictionary<TEnum, string>();
            foreach (TEnum v in Enum.GetValues<TEnum>())
            {
                d.TryAdd(v, v.ToString());
            }
            return d.ToFrozenDictionary();
        }
    }
}
