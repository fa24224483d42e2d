using Microsoft.AspNetCore.Http;

namespace Lckv.Server;

/// <summary>
/// The chat page: one self-contained HTML file (inline CSS and JavaScript) embedded in the assembly and served at /.
/// It talks to the server's own /v1 routes only; the content security policy keeps it from loading anything else.
/// </summary>
internal static class ChatPage
{
    private const string ResourceName = "Lckv.Server.ChatPage.html";

    private static readonly Lazy<byte[]> _html = new(() =>
    {
        using var stream = typeof(ChatPage).Assembly.GetManifestResourceStream(ResourceName)
            ?? throw new InvalidOperationException($"the embedded resource {ResourceName} is missing");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    });

    public static Task Serve(HttpContext ctx)
    {
        var bytes = _html.Value;
        ctx.Response.ContentType = "text/html; charset=utf-8";
        ctx.Response.ContentLength = bytes.Length;
        ctx.Response.Headers.CacheControl = "no-cache";
        ctx.Response.Headers["Content-Security-Policy"] =
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'";
        ctx.Response.Headers["X-Content-Type-Options"] = "nosniff";
        return ctx.Response.Body.WriteAsync(bytes, ctx.RequestAborted).AsTask();
    }
}
