//! Masking of personal data for logs and for responses that do not need it in full.

/// `张三丰` → `张*丰`, `张三` → `张*`, `A` → `*`.
pub fn name(value: &str) -> String {
    let chars: Vec<char> = value.trim().chars().collect();
    match chars.len() {
        0 => String::new(),
        1 => "*".to_owned(),
        2 => format!("{}*", chars[0]),
        n => format!("{}{}{}", chars[0], "*".repeat(n - 2), chars[n - 1]),
    }
}

/// Keeps the first 3 and last 4 characters of an ID number: `110***********002X`.
pub fn id_number(value: &str) -> String {
    keep_ends(value, 3, 4)
}

/// Keeps the first 3 and last 4 digits of a phone number: `138****8000`.
pub fn phone(value: &str) -> String {
    keep_ends(value, 3, 4)
}

/// `zhangsan@example.com` → `z***@example.com`.
pub fn email(value: &str) -> String {
    match value.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "*".repeat(value.chars().count().min(8)),
    }
}

/// Keeps the first and last 4 characters of a WeChat openid: `oAbC********wXyZ`.
pub fn openid(value: &str) -> String {
    keep_ends(value, 4, 4)
}

/// Keeps the first and last 4 characters of a payment's order number: enough
/// to tell two apart in a log, not to use one.
pub fn token(value: &str) -> String {
    keep_ends(value, 4, 4)
}

fn keep_ends(value: &str, head: usize, tail: usize) -> String {
    let chars: Vec<char> = value.trim().chars().collect();
    let n = chars.len();
    if n <= head + tail {
        // Too short to show anything safely.
        return "*".repeat(n);
    }
    let mut out: String = chars[..head].iter().collect();
    out.push_str(&"*".repeat(n - head - tail));
    out.extend(&chars[n - tail..]);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn masks() {
        assert_eq!(super::name("张三丰"), "张*丰");
        assert_eq!(super::name("张三"), "张*");
        assert_eq!(super::name("欧阳娜娜"), "欧**娜");
        assert_eq!(super::id_number("11010519491231002X"), "110***********002X");
        assert_eq!(super::phone("13800138000"), "138****8000");
        assert_eq!(super::phone("12345"), "*****");
        assert_eq!(super::email("zhangsan@example.com"), "z***@example.com");
        assert_eq!(super::token("oPayer0123456789"), "oPay********6789");
    }
}
